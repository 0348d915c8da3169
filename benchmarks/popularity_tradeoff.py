"""Benchmark: how much popularity each model needs to lead most-popular on the random split,
and what that popularity costs it on the other protocols (DESIGN §6, ml-latest-small).

The random split ranks over all movies with nothing excluded, so a model that recommends a
user's own movies wastes slots there that the held-out and temporal protocols (which
exclude them) never charge for. This script scores the two-tower model, Spark MLlib ALS
and EASE on every protocol with the evaluation's own code (``jobs/evaluate.py``'s
protocols, ``rank`` and ``protocol_metrics``; ALS tuned by its grid on the validation
users, folded in; the two-tower model retrained on the random split's 80%), each with the
same popularity prior added at scoring time:

    score'(user, movie) = z_user(score) + beta * z(log(1 + ratings of the movie in the fit))

``z_user`` standardises a model's scores over the catalog for each user (so one beta means
the same for models whose scores live on different scales) and ``z`` standardises the
log-counts. beta = 0 is each model as the nightly evaluates it.

    python benchmarks/popularity_tradeoff.py --preprocess-root /tmp/q \
        [--betas 0,0.5,1,2,2.5,3,4] [--models two-tower,ALS,EASE] [--set train.seed=1]

The preprocess run of ml-latest-small under ``--preprocess-root`` is reused (made there if
missing). Prints one row per model and beta and writes the table as JSON
(``bench-results/popularity_tradeoff.json`` by default).
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

MODELS = ("two-tower", "ALS", "EASE")
#: protocol -> (short label, the metric printed for it)
HEADLINE = {"held-out users (validation)": ("validation", "recall@20"),
            "held-out users (test)": ("test", "recall@20"),
            "temporal next-item": ("temporal", "hr@10"),
            "random split": ("random", "top10_accuracy")}


def _line(label: str, metrics: dict[str, dict[str, float]]) -> str:
    return f"{label:24s}" + "  ".join(f"{short} {metric} {metrics[name][metric]:.4f}"
                                      for name, (short, metric) in HEADLINE.items())


class WithPrior:
    """``base``'s scores, standardised per user, plus ``beta`` standardised log-counts."""

    def __init__(self, base, counts: np.ndarray, beta: float) -> None:  # noqa: ANN001
        self.base, self.beta = base, float(beta)
        log_counts = np.log1p(counts.astype(np.float64))
        self.prior = ((log_counts - log_counts.mean()) / max(log_counts.std(), 1e-12)
                      ).astype(np.float32)

    def scores(self, query, rows: slice) -> np.ndarray:  # noqa: ANN001
        s = np.asarray(self.base.scores(query, rows), np.float32)
        finite = np.isfinite(s)
        z = np.where(finite, s, np.nan)
        mean = np.nanmean(z, axis=1, keepdims=True)
        std = np.nanstd(z, axis=1, keepdims=True)
        out = (s - mean) / np.maximum(std, 1e-12) + self.beta * self.prior[None, :]
        return np.where(finite, out, -np.inf).astype(np.float32)


def parse_betas(text: str) -> list[float]:
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--betas must be comma-separated numbers, got {text!r}") from None
    if not betas or any(b < 0 for b in betas):
        raise SystemExit(f"--betas needs at least one value, none negative; got {text!r}")
    return betas


def parse_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise SystemExit(f"--models takes a comma-separated subset of {', '.join(MODELS)}; "
                         f"got {text!r}")
    return models


def protocol_scorers(config, preprocess_dir: str, corpus, protocols, models: list[str],  # noqa: ANN001
                     work: str, spark) -> dict[str, dict[str, object]]:  # noqa: ANN001
    """``scorers[model][protocol name]``: each of ``models`` as ``jobs/evaluate.py`` scores
    it on each protocol: the two-tower model trained on ``config`` (and retrained on the
    random split's 80%), ALS tuned by the evaluation's grid on the validation users and
    folded in (``spark`` needed), EASE fitted on each protocol's fit."""
    from recsys.evaluation.evaluate import _retrain, als_scorer, ease_scorer, tune_als
    from recsys.evaluation.models import TwoTower
    from recsys.model.train import run_train

    scorers: dict[str, dict[str, object]] = {m: {} for m in models}
    if "two-tower" in models:
        print("training the two-tower model (and again on the random split's 80%)", flush=True)
        shipped = TwoTower(run_train(config).run_dir, corpus.movie_ids, str(Path(work) / "tt"))
        for p in protocols:
            scorers["two-tower"][p.name] = _retrain(config, preprocess_dir, corpus, p, work) \
                if p.name == "random split" else shipped
    if "ALS" in models:
        print("tuning ALS on the validation users (the evaluation's grid)", flush=True)
        tuned, _ = tune_als(spark, corpus, config)
        for p in protocols:
            scorers["ALS"][p.name] = als_scorer(spark, tuned, p, corpus.movie_ids)
    if "EASE" in models:
        for p in protocols:
            ease = ease_scorer(p, corpus.n_movies, config.evaluate)
            if ease is None:
                raise SystemExit(f"EASE is off for {corpus.n_movies} movies (over "
                                 "evaluate.ease_max_movies); leave it out of --models")
            scorers["EASE"][p.name] = ease
    return scorers


def tradeoff(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import recsys  # noqa: F401  (TensorFlow's environment first)
    from recsys import artifacts
    from recsys.config import load_config
    from recsys.evaluation.evaluate import most_rated, protocol_metrics, rank
    from recsys.evaluation.models import MostPopular
    from recsys.evaluation.protocols import load_corpus
    from recsys.spark import build_session

    betas, models = parse_betas(args.betas), parse_models(args.models)
    root = args.preprocess_root or tempfile.mkdtemp(prefix="bench-tradeoff-")
    ensure_preprocessed(root, str(REPO / "data/ml-latest-small"), "2g")
    config = load_config(REPO / "conf/default.toml", [f"artifact_root={root}", *args.overrides])
    preprocess_dir = artifacts.resolve(config.artifact_root, "preprocess", None)
    corpus = load_corpus(preprocess_dir)
    protocols = headline_protocols(corpus, config.split.seed)
    # (fit counts, the 1% most-rated movies) per protocol: the prior and popular-share
    popularity = {p.name: most_rated(p, corpus.n_movies) for p in protocols}
    work = tempfile.mkdtemp(prefix="bench-tradeoff-work-")
    started = time.perf_counter()
    spark = build_session("popularity-tradeoff", config.spark) if "ALS" in models else None
    try:
        scorers = protocol_scorers(config, preprocess_dir, corpus, protocols, models, work,
                                   spark)
        rows = []
        for model in models:
            for beta in betas:
                row = {"model": model, "beta": beta, "protocols": {}}
                for p in protocols:
                    counts, popular = popularity[p.name]
                    scorer = WithPrior(scorers[model][p.name], counts, beta)
                    row["protocols"][p.name] = protocol_metrics(
                        p, rank(scorer, p, corpus.n_movies), popular, corpus.n_movies)
                rows.append(row)
                print(_line(f"{model} beta {beta:g}", row["protocols"]), flush=True)
    finally:
        if spark is not None:
            spark.stop()
    reference = {}
    for p in protocols:  # most-popular itself: the prior alone
        reference[p.name] = protocol_metrics(
            p, rank(MostPopular(p.fit, corpus.n_movies), p, corpus.n_movies),
            popularity[p.name][1], corpus.n_movies)
    print(_line("most-popular", reference))
    return {**machine(), "corpus": "ml-latest-small", "command": " ".join(sys.argv),
            "prior": "z_user(score) + beta * z(log1p(fit count))", "wall_s":
            round(time.perf_counter() - started, 1), "rows": rows, "most_popular": reference}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preprocess-root", default=None,
                   help="artifact root whose ml-latest-small preprocess run is reused; made "
                        "there if missing (default: a new temporary root)")
    p.add_argument("--betas", default="0,0.5,1,2,2.5,3,4",
                   help="popularity weights to score each model with (comma-separated)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="configuration override (two-tower training, split, ALS grid)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    write_result(tradeoff(args), args.out, "popularity_tradeoff.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
