"""The nightly pipeline, for cron: preprocess -> train -> index -> score -> evaluate.

    python jobs/nightly.py [--conf-file conf/prod.toml] [--artifact-root URI]
        [--input RELEASE] [--run-date YYYY-MM-DD] [--force-train] [--set section.key=value ...]

Each stage runs as its own job (Spark stages through spark-submit), with this run's
configuration. Training is skipped while the latest model is younger than
nightly.max_model_age_hours (counted from the start of its training, with an hour's
slack), tonight's catalog is the one it embeds, and it was trained with tonight's
[split], [model] and [train] settings. One log file per run in
nightly.log_dir; a summary at the end (also <artifact_root>/nightly/<run_id>/summary.json).

Exit codes: 0 ok; 10 another nightly run holds the lock (nothing was done); 11 preprocess,
12 train, 13 index, 14 score, 15 evaluate failed (the published tables are unchanged by
a failed stage); 2 configuration error; 4 the artifact root's storage cannot be opened or
is full (both said before the first stage); 130 interrupted.

Example crontab line (02:15 every night, UTC machine):

    15 2 * * * cd /opt/movielens-recs && .venv/bin/python jobs/nightly.py --conf-file conf/prod.toml >> logs/cron.out 2>&1
"""

import sys

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment first)
from recsys import cli
from recsys.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--input", help="MovieLens release to preprocess (overrides data.input).")
    p.add_argument("--run-date", help="Partition to publish (default: today in "
                   "score.run_date_timezone, UTC unless set).")
    p.add_argument("--force-train", action="store_true",
                   help="Train even when a model younger than nightly.max_model_age_hours exists.")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.nightly import EXIT_LOCKED, LockedError, run_nightly

        config = config_from_args(args, trains=True)
        if args.input:
            config = config.with_input(args.input)
        try:
            result = run_nightly(config, run_date=args.run_date, force_train=args.force_train)
        except LockedError as exc:
            print(f"nightly: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        return result.exit_code

    return cli.run_main("nightly", body)


if __name__ == "__main__":
    sys.exit(main())
