"""Offline evaluation: the model against most-popular, Spark MLlib ALS and EASE.

    spark-submit jobs/evaluate.py [--conf-file conf/default.toml] [--artifact-root URI]
        [--preprocess-run ID] [--train-run ID] [--run-id ID] [--set evaluate.als_ranks=[32,64] ...]

Protocols (DESIGN §6): held-out test users (Recall@20/50, NDCG@100), temporal next-item
(HR@10, NDCG@10), random 80/20 split (top-K categorical accuracy); all with catalog
coverage and popular share. Writes <root>/evaluate/<run_id>/ with metrics.json and
report.md (tables and plots). Exit codes: 0 ok, 2 configuration, 4 missing or corrupt
artifacts, 1 other.
"""

import dataclasses
import sys

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment first)
from recsys import cli
from recsys.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--preprocess-run",
                   help="Preprocess run to evaluate on: the one the model was trained on "
                        "(the default); another is refused, as its split may hold out "
                        "what the model trained on.")
    p.add_argument("--train-run", help="Train run of the model (default: LATEST).")
    p.add_argument("--run-id", help="Run id to write (default: a new timestamped id).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.evaluation.evaluate import check_inputs, run_evaluate
        from recsys.spark import build_session

        config = config_from_args(args, trains=True)
        inputs = check_inputs(config, run_id=args.run_id, preprocess_run=args.preprocess_run,
                              train_run=args.train_run)  # before Spark starts
        spark = build_session("movielens-recs evaluate",
                              dataclasses.replace(config.spark, hive_catalog=False))
        try:
            result = run_evaluate(spark, config, inputs)
        finally:
            spark.stop()
        for name, line in result.manifest["headline"].items():
            print(f"evaluate: {name}: {line}")
        print(f"evaluate: report {result.manifest['report']}")
        return 0

    return cli.run_main("evaluate", body)


if __name__ == "__main__":
    sys.exit(main())
