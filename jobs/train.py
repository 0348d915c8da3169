"""Train the two-tower retrieval model on the latest preprocess run.

    python jobs/train.py [--conf-file conf/prod.toml] [--artifact-root URI]
                         [--preprocess-run RUN_ID] [--run-id RUN_ID]
                         [--set section.key=value ...]

Also runs under spark-submit (it starts no SparkSession: training is TensorFlow on the
driver). Writes <artifact_root>/train/<run_id>/ (see recsys.model.train): the user tower
SavedModel, movie embeddings, vocabularies, metrics, TensorBoard logs and a manifest.
Exit codes: 0 ok, 2 configuration (incl. an artifact root it cannot write, said before
training), 4 missing or incomplete preprocess artifacts, 1 other.
"""

import sys

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment first)
from recsys import cli
from recsys.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--preprocess-run", help="Preprocess run id to train on (default: LATEST).")
    p.add_argument("--run-id", help="Run id to write (default: a new timestamped id).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.model.train import run_train

        config = config_from_args(args, trains=True)
        result = run_train(config, run_id=args.run_id, preprocess_run=args.preprocess_run)
        val = result.metrics["validation"]
        model, popular = val["model"], val["most_popular"]
        counts = result.manifest["counts"]
        if counts["validation_users"]:
            validation = (f"validation recall@20 {model['recall@20']:.4f} (most-popular "
                          f"{popular['recall@20']:.4f}), ndcg@100 {model['ndcg@100']:.4f} "
                          f"(most-popular {popular['ndcg@100']:.4f})")
        else:
            validation = "no validation users (the last epoch kept)"
        print(f"train: {config.model.kind} model, {counts['examples']} examples "
              f"({counts['examples_per_s']}/s); {validation}; wrote {result.run_dir}")
        return 0

    return cli.run_main("train", body)


if __name__ == "__main__":
    sys.exit(main())
