"""Benchmark: training, timed as the nightly runs it, and its quality on ml-latest-small.

Full scale (default): preprocesses the full-scale synthetic corpus (untimed; reuse a
previous run with --preprocess-root), then times ``python jobs/train.py`` with the default
configuration and reports wall time, peak RSS of the process tree, examples/s, epochs and
validation metrics. Goal (DESIGN §7): <= 30 min wall on 2 cores.

    python benchmarks/bench_train.py --input data/synthetic/ml-25m-synthetic

Quality (--quality-small): trains the shipped conf/default.toml model (two-tower), the
same tower with the causal next_item objective (the configuration shipped before
held_out_set) and the matrix-factorization baseline on ml-latest-small and reports, on the held-out *test*
users (DESIGN §6; neither trained on nor used to pick epochs), Recall@20, Recall@50 and
NDCG@100 of each next to most-popular. With ``--set`` overrides, only the two-tower model
is trained, with them (model experiments), and its validation Recall@20 is reported too.

    python benchmarks/bench_train.py --quality-small [--set model.tower_layers=[128] ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from measure import REPO, job_env, machine, run_measured, spark_submit_cmd


def preprocess(root: str, source: str, driver_memory: str) -> None:
    cmd = [*spark_submit_cmd(sys.executable, driver_memory), str(REPO / "jobs/preprocess.py"),
           "--input", source, "--artifact-root", root]
    measured = run_measured(cmd, job_env(sys.executable))
    if measured.returncode != 0:
        raise SystemExit(f"preprocess failed with exit code {measured.returncode}")


def full_scale(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    from recsys import artifacts, io

    root = args.preprocess_root or tempfile.mkdtemp(prefix="bench-train-")
    if not io.exists(io.join(io.normalize_uri(root), "preprocess", artifacts.LATEST)):
        preprocess(root, args.input, args.driver_memory)
    cmd = [sys.executable, str(REPO / "jobs/train.py"), "--artifact-root", root]
    for override in args.overrides:
        cmd += ["--set", override]
    measured = run_measured(cmd, job_env(sys.executable))
    if measured.returncode != 0:
        raise SystemExit(f"train failed with exit code {measured.returncode}")
    manifest = artifacts.read_manifest(artifacts.resolve(io.normalize_uri(root), "train"))
    return {
        **machine(),
        "command": "python jobs/train.py (default configuration)" +
                   "".join(f" --set {o}" for o in args.overrides),
        "wall_s": measured.wall_s,
        "peak_rss_gib": measured.peak_rss_gib,
        "counts": manifest["counts"],
        "timings_s": manifest["timings_s"],
        "validation": manifest["metrics"]["validation"],
        "goal": {"wall_s": 1800},
        "meets_goal": measured.wall_s <= 1800,
    }


def quality_small(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import recsys  # noqa: F401
    import numpy as np

    from recsys.config import load_config
    from recsys.evaluation.metrics import most_popular_scores, ranking_metrics, top_k_exact
    from recsys.model.examples import TEST, held_out_users
    from recsys.model.train import run_train

    root = tempfile.mkdtemp(prefix="bench-quality-")
    preprocess(root, str(REPO / "data/ml-latest-small"), "2g")
    shipped = load_config(REPO / "conf/default.toml", [f"artifact_root={root}", *args.overrides])
    configs = {
        "two-tower (conf/default.toml" + "".join(f" {o}" for o in args.overrides) + ")": shipped,
    }
    if not args.overrides:
        # the configuration shipped before the held_out_set objective: causal next-item
        configs["two-tower, next_item objective"] = load_config(REPO / "conf/default.toml", [
            f"artifact_root={root}", "train.objective=next_item", "model.history_length=200",
            "train.examples_per_user=1000", "train.learning_rate=0.001", "train.epochs=8"])
        configs["matrix factorization"] = load_config(REPO / "conf/default.toml", [
            f"artifact_root={root}", "model.kind=mf", "train.objective=next_item",
            "train.examples_per_user=1000",
            "train.learning_rate=0.01", "train.min_target_rating=0.0"])
    table: dict[str, dict] = {}
    for name, config in configs.items():
        result = run_train(config)
        t = result.trained
        users = held_out_users(t.stream, TEST)
        seen = (users.inputs.offsets, users.inputs.movies.astype(np.int64))
        movie_emb, user_emb = t.movie_embeddings(), t.user_embeddings(users)
        n = users.user_ids.size
        ranked, _ = top_k_exact(lambda rows: user_emb[rows] @ movie_emb.T, n, 100, seen)
        table[name] = ranking_metrics(ranked, users.truth)
        table[name]["epochs"] = result.manifest["counts"]["epochs"]
        table[name]["validation_recall@20"] = \
            result.metrics["validation"]["model"]["recall@20"]
        if "most-popular" not in table:
            popular, _ = top_k_exact(most_popular_scores(t.scan.train_counts), n, 100, seen)
            table["most-popular"] = ranking_metrics(popular, users.truth)
    for name, m in table.items():
        print(f"{name:32s} recall@20 {m['recall@20']:.4f}  recall@50 {m['recall@50']:.4f}  "
              f"ndcg@100 {m['ndcg@100']:.4f}  ({m['users']} test users)")
    return {**machine(), "corpus": "ml-latest-small", "protocol": "held-out test users",
            "results": table}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=str(REPO / "data/synthetic/ml-25m-synthetic"))
    p.add_argument("--preprocess-root", default=None,
                   help="artifact root that already holds a preprocess run of --input")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="configuration override passed to the train job")
    p.add_argument("--quality-small", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    result = quality_small(args) if args.quality_small else full_scale(args)
    out = Path(args.out or REPO / "bench-results" /
               ("train_quality.json" if args.quality_small else "train.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
