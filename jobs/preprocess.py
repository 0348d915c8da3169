"""Preprocess a MovieLens release into per-user histories and the other stage-1 artifacts.

    spark-submit jobs/preprocess.py [--conf-file conf/prod.toml] [--input PATH_OR_ZIP]
                                    [--artifact-root URI] [--set section.key=value ...]

Writes <artifact_root>/preprocess/<run_id>/ (see recsys.features.preprocess) and prints
its location. Exit codes: 0 ok, 2 configuration (incl. an artifact root it cannot write),
3 bad input (missing or unreadable file, wrong header, too many rejects), 1 anything else.
"""

import sys

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment first)
from recsys import cli
from recsys.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--input", help="MovieLens release directory or .zip (overrides data.input).")
    p.add_argument("--run-id", help="Run id to write (default: a new timestamped id).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.features.preprocess import check_inputs, run_preprocess
        from recsys.spark import build_session

        config = config_from_args(args)
        if args.input:
            config = config.with_input(args.input)
        check_inputs(config)  # before Spark takes its seconds to start
        spark = build_session("movielens-recs preprocess", config.spark)
        try:
            result = run_preprocess(spark, config, run_id=args.run_id)
        finally:
            spark.stop()
        counts = result.manifest["counts"]
        print(
            f"preprocess: {counts['users']} users, {counts['ratings']} ratings, "
            f"{counts['movies']} movies; rejected {counts['rejected']}; "
            f"wrote {result.run_dir}"
        )
        return 0

    return cli.run_main("preprocess", body)


if __name__ == "__main__":
    sys.exit(main())
