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

Model experiments can reuse one preprocess run (``--preprocess-root``, made by the first
run under that root) and score the two-tower model on every protocol of DESIGN §6 with
the evaluation's own code (``--all-protocols``: validation and test held-out users, the
temporal next-item protocol, and the random split, for which it retrains the model on the
80% as ``jobs/evaluate.py`` does). The baselines' figures on the same split are in the
evaluation report of ``make run``.

    python benchmarks/bench_train.py --quality-small --preprocess-root /tmp/q \
        --all-protocols --set train.learning_rate=0.001
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from measure import REPO, has_run, job_env, machine, run_measured, spark_submit_cmd, write_result


def ensure_preprocessed(root: str, source: str, driver_memory: str,
                        overrides: tuple[str, ...] = ()) -> None:
    """Preprocess ``source`` into ``root`` (with ``--set`` ``overrides``, e.g. another
    ``split.seed``) unless it already holds a preprocess run."""
    if has_run(root, "preprocess"):
        return
    cmd = [*spark_submit_cmd(sys.executable, driver_memory), str(REPO / "jobs/preprocess.py"),
           "--input", source, "--artifact-root", root]
    for override in overrides:
        cmd += ["--set", override]
    measured = run_measured(cmd, job_env(sys.executable))
    if measured.returncode != 0:
        raise SystemExit(f"preprocess failed with exit code {measured.returncode}")


def full_scale(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    from recsys import artifacts, io

    root = args.preprocess_root or tempfile.mkdtemp(prefix="bench-train-")
    ensure_preprocessed(root, args.input, args.driver_memory)
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

    root = args.preprocess_root or tempfile.mkdtemp(prefix="bench-quality-")
    ensure_preprocessed(root, str(REPO / "data/ml-latest-small"), "2g")
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
        if args.all_protocols and name.startswith("two-tower"):
            table[name]["protocols"] = all_protocols(config, result.run_dir)
        if "most-popular" not in table:
            popular, _ = top_k_exact(most_popular_scores(t.scan.train_counts), n, 100, seen)
            table["most-popular"] = ranking_metrics(popular, users.truth)
    for name, m in table.items():
        print(f"{name:32s} recall@20 {m['recall@20']:.4f}  recall@50 {m['recall@50']:.4f}  "
              f"ndcg@100 {m['ndcg@100']:.4f}  ({m['users']} test users)")
        for protocol, metrics in m.get("protocols", {}).items():
            print(f"    {protocol}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {**machine(), "corpus": "ml-latest-small", "protocol": "held-out test users",
            "results": table}


def headline_protocols(corpus, seed: int) -> list:  # noqa: ANN001
    """The protocols every quality benchmark reports (DESIGN §6), in this order: the
    validation and the test held-out users, the temporal next-item protocol and the
    random split cut with ``seed``."""
    from recsys.evaluation.protocols import (TEST, VALIDATION, held_out_users, random_split,
                                             temporal)

    return [held_out_users(corpus, VALIDATION), held_out_users(corpus, TEST),
            temporal(corpus), random_split(corpus, seed=seed)]


def all_protocols(config, train_dir: str) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """The two-tower model of ``train_dir`` on every protocol, scored as jobs/evaluate.py
    scores it (the random split retrains it on the 80%)."""
    from recsys import artifacts
    from recsys.evaluation.evaluate import _retrain, most_rated, protocol_metrics, rank
    from recsys.evaluation.models import TwoTower
    from recsys.evaluation.protocols import load_corpus

    preprocess_dir = artifacts.resolve(config.artifact_root, "preprocess", None)
    corpus = load_corpus(preprocess_dir)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-eval-") as work:
        model = TwoTower(train_dir, corpus.movie_ids, str(Path(work) / "model"))
        for protocol in headline_protocols(corpus, config.split.seed):
            scorer = _retrain(config, preprocess_dir, corpus, protocol, work) \
                if protocol.name == "random split" else model
            _, popular = most_rated(protocol, corpus.n_movies)
            out[protocol.name] = protocol_metrics(
                protocol, rank(scorer, protocol, corpus.n_movies), popular, corpus.n_movies)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=str(REPO / "data/synthetic/ml-25m-synthetic"))
    p.add_argument("--preprocess-root", default=None,
                   help="artifact root whose preprocess run (of --input, or of "
                        "ml-latest-small with --quality-small) is reused; made there if "
                        "missing")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="configuration override passed to the train job")
    p.add_argument("--quality-small", action="store_true")
    p.add_argument("--all-protocols", action="store_true",
                   help="--quality-small: also score the two-tower model on the validation "
                        "users, the temporal protocol and the random split")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    result = quality_small(args) if args.quality_small else full_scale(args)
    print(json.dumps(result, indent=2))
    write_result(result, args.out, "train_quality.json" if args.quality_small else "train.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
