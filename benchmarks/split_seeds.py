"""Benchmark: the quality comparison of DESIGN §6 repeated over several splits of
ml-latest-small, so that a verdict does not rest on one draw of 56 test users.

The evaluation's split (``split.seed``) decides which users are the held-out validation
and test users, which 20% of their positives are to be found, and the random split's
80/20 cut. For each seed this script preprocesses ml-latest-small with that split (reused
under ``--work-root`` when already there), then scores the two-tower model of
``conf/default.toml`` (trained on that split; retrained on its random split's 80%), Spark
MLlib ALS (the evaluation's grid tuned on that split's validation users, folded in), EASE
and most-popular on every protocol, with the evaluation's own code (``jobs/evaluate.py``'s
protocols, ``rank`` and ``protocol_metrics``), as one evaluation run would.

    python benchmarks/split_seeds.py [--seeds 42,1,2,3,4] [--work-root DIR] \\
        [--models two-tower,ALS,EASE] [--set train.seed=1 ...]

Prints each seed's figures as it finishes, then per model and protocol the mean and
standard deviation over the seeds, and the two-tower model minus each baseline: its mean,
the standard error of that mean over seeds and the number of seeds where the two-tower
model is ahead. Writes everything as JSON (``bench-results/split_seeds.json`` by default).
About 1.5 minutes a seed on 2 cores, and 45 s more to preprocess a seed's split the
first time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_train import ensure_preprocessed, headline_protocols
from measure import REPO, machine, write_result
from popularity_tradeoff import HEADLINE, _line, parse_models, protocol_scorers

MOST_POPULAR = "most-popular"


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds needs at least one seed and no repeats; got {text!r}")
    return seeds


def one_split(seed: int, args: argparse.Namespace, models: list[str], spark) -> dict:  # noqa: ANN001
    """Every model's metrics on every protocol of the split ``seed``."""
    from recsys import artifacts
    from recsys.config import load_config
    from recsys.evaluation.evaluate import most_rated, protocol_metrics, rank
    from recsys.evaluation.models import MostPopular
    from recsys.evaluation.protocols import load_corpus

    root = str(Path(args.work_root) / f"split-{seed}")
    split = f"split.seed={seed}"
    ensure_preprocessed(root, str(REPO / "data/ml-latest-small"), "2g", (split,))
    config = load_config(REPO / "conf/default.toml",
                         [f"artifact_root={root}", split, *args.overrides])
    preprocess_dir = artifacts.resolve(config.artifact_root, "preprocess", None)
    corpus = load_corpus(preprocess_dir)
    protocols = headline_protocols(corpus, config.split.seed)
    with tempfile.TemporaryDirectory(prefix=f"bench-splits-{seed}-") as work:
        scorers = protocol_scorers(config, preprocess_dir, corpus, protocols, models, work,
                                   spark)
        scorers[MOST_POPULAR] = {p.name: MostPopular(p.fit, corpus.n_movies)
                                 for p in protocols}
        # the 1% most-rated movies of each protocol's fit (popular-share), once a protocol
        popular = {p.name: most_rated(p, corpus.n_movies)[1] for p in protocols}
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for model, by_protocol in scorers.items():
            metrics[model] = {}
            for p in protocols:
                metrics[model][p.name] = protocol_metrics(
                    p, rank(by_protocol[p.name], p, corpus.n_movies), popular[p.name],
                    corpus.n_movies)
            print(_line(f"seed {seed} {model}", metrics[model]), flush=True)
    users = {p.name: int(p.truth[0].size - 1) for p in protocols}
    return {"seed": seed, "users": users, "metrics": metrics}


def summarise(splits: list[dict], models: list[str]) -> dict:
    """Mean and spread over the splits of each headline figure, and the two-tower model
    minus each baseline, split by split."""
    names = [*models, MOST_POPULAR]
    summary: dict[str, dict] = {"models": {}, "two-tower minus": {}}
    for model in names:
        summary["models"][model] = {}
        for protocol, (short, metric) in HEADLINE.items():
            values = np.array([s["metrics"][model][protocol][metric] for s in splits])
            summary["models"][model][short] = {
                "metric": metric, "mean": round(float(values.mean()), 4),
                "std": round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 4)}
    if "two-tower" in models:
        for baseline in (n for n in names if n != "two-tower"):
            summary["two-tower minus"][baseline] = {}
            for protocol, (short, metric) in HEADLINE.items():
                diff = np.array([s["metrics"]["two-tower"][protocol][metric] -
                                 s["metrics"][baseline][protocol][metric] for s in splits])
                se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
                summary["two-tower minus"][baseline][short] = {
                    "per_seed": [round(float(d), 4) for d in diff],
                    "mean": round(float(diff.mean()), 4), "standard_error": round(se, 4),
                    "seeds_ahead": int((diff > 0).sum()), "seeds": int(diff.size)}
    return summary


def print_summary(summary: dict) -> None:
    columns = [f"{short} {metric}" for short, metric in HEADLINE.values()]
    print("\nmean ± standard deviation over the splits")
    print(f"{'model':14s}" + "".join(f"{c:>26s}" for c in columns))
    for model, figures in summary["models"].items():
        print(f"{model:14s}" + "".join(
            f"{figures[short]['mean']:>17.4f} ± {figures[short]['std']:.4f}"
            for short, _ in HEADLINE.values()))
    if summary["two-tower minus"]:
        print("\ntwo-tower minus baseline: mean ± standard error over the splits "
              "(splits where the two-tower model is ahead)")
        for baseline, figures in summary["two-tower minus"].items():
            print(f"{baseline:14s}" + "".join(
                f"{figures[s]['mean']:>+12.4f} ± {figures[s]['standard_error']:.4f} "
                f"({figures[s]['seeds_ahead']}/{figures[s]['seeds']})"
                for s, _ in HEADLINE.values()))


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import recsys  # noqa: F401  (TensorFlow's environment first)
    from recsys.config import load_config
    from recsys.spark import build_session

    seeds, models = parse_seeds(args.seeds), parse_models(args.models)
    args.work_root = args.work_root or tempfile.mkdtemp(prefix="bench-splits-")
    started = time.perf_counter()
    spark_config = load_config(REPO / "conf/default.toml", args.overrides).spark
    spark = build_session("split-seeds", spark_config) if "ALS" in models else None
    splits = []
    try:
        for i, seed in enumerate(seeds, 1):
            print(f"split {i}/{len(seeds)}: split.seed={seed} "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
            splits.append(one_split(seed, args, models, spark))
    finally:
        if spark is not None:
            spark.stop()
    summary = summarise(splits, models)
    print_summary(summary)
    return {**machine(), "corpus": "ml-latest-small", "command": " ".join(sys.argv),
            "work_root": args.work_root, "wall_s": round(time.perf_counter() - started, 1),
            "splits": splits, "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="42,1,2,3,4",
                   help="split seeds (comma-separated; 42 is conf/default.toml's split)")
    p.add_argument("--work-root", default=None,
                   help="directory holding one preprocess run per seed (split-<seed>/), "
                        "reused when present (default: a new temporary directory)")
    p.add_argument("--models", default="two-tower,ALS,EASE",
                   help="comma-separated subset of two-tower, ALS, EASE (most-popular is "
                        "always scored)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="configuration override (two-tower training, ALS grid, Spark "
                        "session; not split.seed, which --seeds sets)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if any(o.split("=", 1)[0].strip() == "split.seed" for o in args.overrides):
        raise SystemExit("--set split.seed=... clashes with --seeds; list the seeds there")
    write_result(run(args), args.out, "split_seeds.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
