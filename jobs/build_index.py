"""Build the exact and ScaNN movie searchers from the latest train run.

    python jobs/build_index.py [--conf-file conf/prod.toml] [--artifact-root URI]
                               [--train-run RUN_ID] [--run-id RUN_ID]
                               [--set index.key=value ...]

Writes <artifact_root>/index/<run_id>/ (see recsys.index.build) after measuring ScaNN's
recall@N against exact search on sampled real users. Exit codes: 0 ok, 2 configuration,
4 missing/corrupt train artifacts or recall below index.recall_floor, 1 other.
"""

import sys

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment first)
from recsys import cli
from recsys.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--train-run", help="Train run id to index (default: LATEST).")
    p.add_argument("--run-id", help="Run id to write (default: a new timestamped id).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.index.build import run_index

        config = config_from_args(args)
        result = run_index(config, run_id=args.run_id, train_run=args.train_run)
        m = result.manifest
        s = m["settings"]
        leaves = f"{s['leaves_to_search']} of {s['num_leaves']} leaves"
        if s["scoring"] == "brute":
            search = f"exact scoring in {leaves}"
        else:
            search = f"hashing, {s['reorder']} re-ordered" + (
                f", {leaves}" if s["num_leaves"] > 1 else "")
        print(f"index: {m['counts']['movies']} movies, ScaNN recall@{config.index.num_neighbors} "
              f"{result.recall:.4f} (floor {config.index.recall_floor}), {search}, built in "
              f"{m['timings_s']['build_scann']:.1f} s; wrote {result.run_dir}")
        return 0

    return cli.run_main("build_index", body)


if __name__ == "__main__":
    sys.exit(main())
