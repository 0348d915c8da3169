"""Score every user and publish tonight's recommendations: the job cron runs.

    spark-submit [--master yarn|k8s://...|spark://...] jobs/score_all_users.py
        [--conf-file conf/prod.toml] [--artifact-root URI] [--run-date YYYY-MM-DD]
        [--preprocess-run ID] [--train-run ID] [--index-run ID] [--run-id ID]
        [--set score.top_n=100 ...]

Reads the latest preprocess histories, the latest train run and the index built for it
(all verified against their manifests), scores every user in an Arrow UDF, mapInArrow (user tower +
ScaNN, rated movies removed, top-N) and publishes the run_date partition of the
recommendations, user-embeddings and similar-movies tables (see recsys.scoring.score).
Exit codes: 0 ok, 2 configuration (incl. an artifact root it cannot write), 4 missing,
corrupt or mismatched artifacts, 5 the catalog's metastore cannot be opened or its
directory written (nothing published), 7 another run is publishing the same night
(nothing staged), 130 / 143 stopped by Ctrl-C / SIGTERM, 1 other.
"""

import sys

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment first)
from recsys import artifacts, cli
from recsys.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--run-date", help="Partition to publish (default: today in "
                   "score.run_date_timezone, UTC unless set).")
    p.add_argument("--preprocess-run", help="Preprocess run with the histories (default: LATEST).")
    p.add_argument("--train-run", help="Train run of the model (default: LATEST).")
    p.add_argument("--index-run", help="Index run for that model (default: LATEST).")
    p.add_argument("--run-id", help="Run id to write (default: a new timestamped id).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.scoring.score import check_inputs, run_score
        from recsys.spark import build_session

        config = config_from_args(args)
        # a bad date stops here, before Spark
        run_date = artifacts.run_date(args.run_date, timezone=config.score.run_date_timezone)
        inputs = check_inputs(config, run_id=args.run_id, preprocess_run=args.preprocess_run,
                              train_run=args.train_run, index_run=args.index_run)
        spark = build_session("movielens-recs score_all_users", config.spark)
        try:
            result = run_score(spark, config, inputs, run_date=run_date)
        finally:
            spark.stop()
        m = result.manifest
        print(f"score_all_users: {m['counts']['users']} users x top {m['counts']['top_n']}, "
              f"model {m['inputs']['model_version']}, published run_date="
              f"{m['inputs']['run_date']} to {', '.join(result.tables.values())} under "
              f"{m['table_root']}; wrote {result.run_dir}")
        expired = m.data.get("expired")
        if expired:
            print(f"score_all_users: score.keep_nights = {expired['keep_nights']}: removed "
                  f"{len(expired['nights'])} older night(s)"
                  + (f" ({', '.join(expired['nights'])})" if expired["nights"] else "")
                  + (f"; {len(expired['failed'])} could not be: "
                     + "; ".join(expired["failed"]) if expired["failed"] else ""))
        return 0

    return cli.run_main("score_all_users", body)


if __name__ == "__main__":
    sys.exit(main())
