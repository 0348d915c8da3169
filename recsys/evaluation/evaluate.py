"""Stage 6 (DESIGN §6): offline evaluation of the model against baselines, with a report.

Writes ``<root>/evaluate/<run_id>/``::

    metrics.json   every protocol x model x metric, the ALS tuning, the inputs
    report.md      the tables and the plots below, for people
    recall_at_k.png, popularity.png, movie_embeddings.png
    config.toml, manifest.json, _SUCCESS

Protocols (:mod:`recsys.evaluation.protocols`): held-out test users, temporal next-item,
random 80/20 split. Models (:mod:`recsys.evaluation.models`): the two-tower model of the
train run, most-popular, Spark MLlib ALS (lightly tuned on the validation users: the
grid of ``evaluate.als_*``; held-out users are folded in, never fitted on), and EASE when the catalog has at most
``evaluate.ease_max_movies`` movies. On the random split the two-tower model is retrained
on the 80% (``evaluate.random_split_two_tower``): the production model has trained on
those ratings, so scoring it there would leak.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from recsys import artifacts, io
from recsys.config import Config, ConfigError, EvaluateConfig
from recsys.csr import list_column
from recsys.evaluation import report
from recsys.evaluation.als import AlsSettings
from recsys.evaluation.metrics import (hit_rate_at_k, hits_matrix, ndcg_at_k,
                                       paired_bootstrap, per_user, recall_at_k, top_k_exact)
from recsys.evaluation.models import (AlsFit, AlsScorer, Ease, MostPopular, TwoTower,
                                      require_history_model)
from recsys.evaluation.protocols import (ROLES, TEST, VALIDATION, Corpus, Protocol,
                                         held_out_users, load_corpus, random_split, temporal)
from recsys.spark import local_dirs

log = logging.getLogger(__name__)
STAGE = "evaluate"
TOP = 100
#: Per protocol, the metrics on which the two-tower model is compared with each baseline
#: user by user (a paired bootstrap interval of the difference, in the report).
COMPARED = {"held-out": ("recall@20",), "temporal": ("hr@10",),
            "random": ("top10_accuracy", "top100_accuracy")}


@dataclass
class EvaluateResult:
    run_dir: str
    manifest: artifacts.Manifest
    results: dict[str, Any]


def rank(scorer: Any, protocol: Protocol, n_movies: int, k: int = TOP) -> np.ndarray:
    """Exact top-``k`` columns per query user (seen movies excluded if the protocol says)."""
    query = protocol.query
    exclude = query.csr() if protocol.exclude_seen else None
    top, _ = top_k_exact(lambda rows: scorer.scores(query, rows), query.users, min(k, n_movies),
                         exclude, invalid_columns=())
    return top


def most_rated(protocol: Protocol, n_movies: int) -> tuple[np.ndarray, np.ndarray]:
    """Each movie's rating count in the protocol's fit data, and the 1% most rated movies
    (at least one), the set popular-share is measured against."""
    counts = np.bincount(protocol.fit.columns, minlength=n_movies)
    return counts, np.argsort(-counts, kind="stable")[:max(1, n_movies // 100)]


def protocol_metrics(protocol: Protocol, top: np.ndarray, popular: np.ndarray,
                     n_movies: int) -> dict[str, float]:
    hits = hits_matrix(top, protocol.truth)
    n_rel = np.diff(protocol.truth[0])
    keep = n_rel > 0
    out: dict[str, float] = {}
    if protocol.name.startswith("held-out"):
        for k in (20, 50):
            out[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
        out["ndcg@100"] = ndcg_at_k(hits, n_rel, 100)
    elif protocol.name.startswith("temporal"):
        out["hr@10"] = hit_rate_at_k(hits, n_rel, 10)
        out["ndcg@10"] = ndcg_at_k(hits, n_rel, 10)
    else:  # the TFRS tutorial's top-K categorical accuracy: per test rating
        for k in (1, 5, 10, 50, 100):
            out[f"top{k}_accuracy"] = float(hits[keep, :k].sum() / n_rel[keep].sum())
    out["coverage@100"] = float(np.unique(top).size / n_movies)
    out["popular_share@100"] = float(np.isin(top, popular).mean())
    return out


def compared_metrics(protocol_name: str) -> tuple[str, ...]:
    return next(m for prefix, m in COMPARED.items() if protocol_name.startswith(prefix))


def comparisons(protocol: Protocol, tops: dict[str, np.ndarray], *,
                resamples: int = 2000) -> list[dict[str, Any]]:
    """The first model minus each other one on the protocol's compared metrics, with a
    95% paired bootstrap interval over the query users: is a difference more than the
    luck of which users were held out?"""
    n_rel = np.diff(protocol.truth[0])
    parts = {name: hits_matrix(top, protocol.truth) for name, top in tops.items()}
    first, *others = parts
    out = []
    for metric in compared_metrics(protocol.name):
        mine = per_user(parts[first], n_rel, metric)
        for other in others:
            diff, low, high = paired_bootstrap(mine, per_user(parts[other], n_rel, metric),
                                               resamples=resamples)
            out.append({"metric": metric, "model": first, "baseline": other,
                        "difference": diff, "low": low, "high": high})
    return out


def recall_curve(protocol: Protocol, top: np.ndarray) -> list[float]:
    hits = hits_matrix(top, protocol.truth)
    n_rel = np.diff(protocol.truth[0])
    return [round(recall_at_k(hits, n_rel, k), 5) for k in range(1, top.shape[1] + 1)]


def tune_als(spark: SparkSession, corpus: Corpus, config: Config
             ) -> tuple[AlsFit, list[dict[str, Any]]]:
    """The ALS grid of ``evaluate.als_*``, each fitted on the training users and scored
    by Recall@20 on the validation users (folded in); returns the best fit, which the
    held-out test users are folded into as well (same training users, no second fit)."""
    cfg = config.evaluate
    validation = held_out_users(corpus, VALIDATION)
    tried, fits = [], []
    for rank_, reg, implicit in itertools.product(cfg.als_ranks, cfg.als_reg_params,
                                                  cfg.als_implicit):
        settings = AlsSettings(rank=rank_, reg_param=reg, max_iter=cfg.als_max_iter,
                               implicit=implicit, alpha=cfg.als_alpha, seed=config.train.seed,
                               blocks=cfg.als_blocks)
        fitted = AlsFit(spark, validation.fit, corpus.movie_ids, settings)
        top = rank(AlsScorer(fitted, validation.query), validation, corpus.n_movies)
        hits = hits_matrix(top, validation.truth)
        r20 = recall_at_k(hits, np.diff(validation.truth[0]), 20)
        tried.append({"rank": rank_, "reg_param": reg, "implicit": implicit,
                      "validation_recall@20": round(r20, 5)})
        fits.append(fitted)
        log.info("ALS rank=%d reg=%g implicit=%s: validation Recall@20 %.4f", rank_, reg,
                 implicit, r20)
    best = max(range(len(tried)), key=lambda i: tried[i]["validation_recall@20"])
    return fits[best], tried


def als_scorer(spark: SparkSession, tuned: AlsFit, protocol: Protocol,
               catalog: np.ndarray) -> AlsScorer:
    """ALS on ``protocol``: the tuned fit where the protocol fits on the same ratings (the
    held-out users'), else a fit of ``protocol.fit`` with the tuned settings."""
    fit = tuned if tuned.fit.same(protocol.fit) \
        else AlsFit(spark, protocol.fit, catalog, tuned.settings)
    return AlsScorer(fit, protocol.query)


def not_run(corpus: Corpus, cfg: EvaluateConfig) -> list[str]:
    """What the configuration leaves out of this evaluation, said in the report."""
    notes = []
    if corpus.n_movies > cfg.ease_max_movies:
        notes.append(f"EASE, on every protocol: the catalog has {corpus.n_movies:,} movies, "
                     f"more than evaluate.ease_max_movies = {cfg.ease_max_movies:,} (EASE "
                     "holds a dense movies x movies matrix).")
    if not cfg.random_split_two_tower:
        notes.append("the two-tower model on the random split: "
                     "evaluate.random_split_two_tower = false (it is retrained on the 80% "
                     "to be scored there).")
    return notes


def ease_scorer(protocol: Protocol, n_movies: int, cfg: EvaluateConfig) -> Ease | None:
    """EASE fitted on ``protocol.fit``; None when the catalog is over
    ``evaluate.ease_max_movies`` (EASE needs a dense movies x movies matrix)."""
    if n_movies > cfg.ease_max_movies:
        return None
    return Ease(protocol.fit, n_movies, l2=cfg.ease_l2, max_movies=cfg.ease_max_movies,
                min_count=cfg.ease_min_count)


def _split_histories(preprocess_dir: str, corpus: Corpus, protocol: Protocol,
                     dest_root: str) -> None:
    """A preprocess run under ``dest_root`` whose training users keep only their
    random-split fit ratings (time order kept), for retraining the two-tower model."""
    run = os.path.join(dest_root, "preprocess", "random-split")
    os.makedirs(run)
    for name in ("movies", "vocab", "splits"):
        io.copy_to_local(io.join(preprocess_dir, name), os.path.join(run, name))
    hist = io.read_parquet(io.join(preprocess_dir, "histories"))
    fit = protocol.fit
    users = hist.column("user_id").to_numpy().astype(np.int64)
    offsets, movies = list_column(hist.column("movie_ids"))
    owner = np.repeat(np.arange(users.size), np.diff(offsets))
    fit_keys = np.repeat(fit.user_ids.astype(np.int64), np.diff(fit.offsets)) << 32 \
        | corpus.movie_ids[fit.columns].astype(np.int64)
    in_fit = np.isin(users, fit.user_ids)
    keep = ~in_fit[owner] | np.isin(users[owner] << 32 | movies.astype(np.int64), fit_keys)
    counts = np.bincount(owner[keep], minlength=users.size)
    rows = np.flatnonzero(~in_fit | (counts > 0))  # a fit user with nothing left is dropped
    counts = counts[rows]
    new_offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    values = {"movie_ids": movies[keep],
              **{c: list_column(hist.column(c))[1][keep] for c in ("ratings", "timestamps")}}
    sums = np.bincount(np.repeat(np.arange(rows.size), counts),
                       weights=values["ratings"].astype(np.float64), minlength=rows.size)
    table = pa.table({
        "user_id": hist.column("user_id").take(rows),
        **{c: pa.ListArray.from_arrays(new_offsets, pa.array(v), type=hist.schema.field(c).type)
           for c, v in values.items()},
        "num_ratings": pa.array(counts, hist.schema.field("num_ratings").type),
        "mean_rating": pa.array(sums / np.maximum(counts, 1),
                                hist.schema.field("mean_rating").type),
    }).select(hist.schema.names).cast(hist.schema)
    os.makedirs(os.path.join(run, "histories"))
    pq.write_table(table, os.path.join(run, "histories", "part-00000.parquet"))
    with open(os.path.join(run, artifacts.SUCCESS), "w"):
        pass
    with open(os.path.join(run, artifacts.MANIFEST), "w") as fh:
        json.dump({"stage": "preprocess", "run_id": "random-split",
                   "note": "derived by the evaluation: random-split fit ratings only"}, fh)
    with open(os.path.join(dest_root, "preprocess", artifacts.LATEST), "w") as fh:
        fh.write("random-split\n")


def models_preprocess_run(root: str, train_manifest: dict[str, Any],
                          preprocess_run: str | None = None) -> str:
    """The preprocess run to evaluate a model on: the one it was trained on.

    Another run's split is refused: a user held out there may have been a training user
    of the model's run (one who has since reached ``split.min_positives``, or any user
    under another ``split.seed``), and an older run's held-out last ratings may be in the
    model's training histories, so the figures would be inflated.
    """
    trained_on = train_manifest["inputs"]["preprocess_run"]
    if preprocess_run is not None and preprocess_run != trained_on:
        raise artifacts.ArtifactError(
            f"model {train_manifest['run_id']} was trained on preprocess run {trained_on}; "
            f"on preprocess run {preprocess_run} it could be scored on users or ratings it "
            f"was trained on. Evaluate it on {trained_on} (the default), or train a model on "
            f"{preprocess_run} first")
    preprocess_dir = artifacts.resolve(root, "preprocess", trained_on)
    artifacts.verify(preprocess_dir)  # a corrupt run is refused, not read
    return preprocess_dir


def _check_held_out_users(corpus: Corpus, preprocess_run: str) -> None:
    """The evaluation needs validation users (ALS is tuned on them) and test users (the
    held-out protocol scores them); a split without either is refused, not scored as NaN."""
    missing = [ROLES[role] for role in (VALIDATION, TEST) if not (corpus.roles == role).any()]
    if missing:
        raise ConfigError(
            f"preprocess run {preprocess_run} has no {' and no '.join(missing)} users, which "
            "the evaluation needs (ALS is tuned on the validation users, the held-out protocol "
            "scores the test users): evaluate a model trained on a run whose "
            "split.validation_users_fraction and split.test_users_fraction are above 0 (of "
            "the users with at least split.min_positives positives), or set "
            "nightly.evaluate = false")


@dataclass(frozen=True)
class EvaluateInputs:
    """An evaluate run's id and what it reads, verified (:func:`check_inputs`)."""
    run_id: str
    run_dir: str
    train_dir: str
    train_manifest: dict[str, Any]
    preprocess_dir: str


def check_inputs(config: Config, *, run_id: str | None = None,
                 preprocess_run: str | None = None, train_run: str | None = None
                 ) -> EvaluateInputs:
    """The run id (checked: a configuration error first), the train run verified and of
    a history model, and the preprocess run it was trained on, verified; then that the
    stage's directory can be written (a file written and removed). Needs no Spark and
    leaves nothing: the job calls it before it starts Spark, so a missing, corrupt or
    refused input, or a root it cannot write, costs no JVM and leaves no evaluate run
    behind (as the index stage)."""
    root = config.artifact_root
    run_id, run_dir = artifacts.claim_run(root, STAGE, run_id)
    train_dir = artifacts.resolve(root, "train", train_run)
    train_manifest = artifacts.verify(train_dir)
    kind = train_manifest.get("config", {}).get("model", {}).get("kind", "history")
    require_history_model(kind, train_manifest["run_id"])
    preprocess_dir = models_preprocess_run(root, train_manifest, preprocess_run)
    artifacts.check_writable(root, STAGE)
    return EvaluateInputs(run_id, run_dir, train_dir, train_manifest, preprocess_dir)


def run_evaluate(spark: SparkSession, config: Config, inputs: EvaluateInputs
                 ) -> EvaluateResult:
    root = config.artifact_root
    cfg = config.evaluate
    run_id, run_dir = inputs.run_id, inputs.run_dir
    train_dir, train_manifest = inputs.train_dir, inputs.train_manifest
    preprocess_dir = inputs.preprocess_dir
    manifest = artifacts.Manifest(STAGE, run_id, config)
    with tempfile.TemporaryDirectory(prefix="recsys-evaluate-") as work, \
            artifacts.failure_recorded(run_dir, manifest, scratch=work,
                                       spark_scratch=local_dirs(spark)):
        out = os.path.join(work, "out")
        os.makedirs(out)
        with manifest.timed("load"):
            corpus = load_corpus(preprocess_dir)
        _check_held_out_users(corpus, train_manifest["inputs"]["preprocess_run"])
        manifest["inputs"] = {"preprocess_dir": preprocess_dir, "train_dir": train_dir,
                              "model_version": train_manifest["run_id"]}
        results: dict[str, Any] = {
            "run_id": run_id, "model_version": train_manifest["run_id"],
            "preprocess_run": os.path.basename(preprocess_dir.rstrip("/")),
            "movies": corpus.n_movies, "protocols": [], "not_run": not_run(corpus, cfg)}
        for note in results["not_run"]:
            log.warning("not run: %s", note)
        with manifest.timed("tune_als"):
            als_tuned, tried = tune_als(spark, corpus, config)
        als_settings = als_tuned.settings
        results["als_tuning"] = {"tried": tried, "best": {
            "rank": als_settings.rank, "reg_param": als_settings.reg_param,
            "implicit": als_settings.implicit, "max_iter": als_settings.max_iter}}
        two_tower = TwoTower(train_dir, corpus.movie_ids, os.path.join(work, "model"))
        protocols = [held_out_users(corpus, TEST), temporal(corpus),
                     random_split(corpus, seed=config.split.seed)]
        curves: dict[str, list[float]] = {}
        popularity: dict[str, np.ndarray] = {}
        for protocol in protocols:
            with manifest.timed(protocol.name):
                counts, popular = most_rated(protocol, corpus.n_movies)
                scorers: list[tuple[str, Any]] = []
                if protocol.name == "random split":
                    if cfg.random_split_two_tower:
                        scorers.append(("two-tower (retrained on the 80%)",
                                        _retrain(config, preprocess_dir, corpus, protocol,
                                                 work)))
                else:
                    scorers.append((TwoTower.name, two_tower))
                scorers.append((MostPopular.name, MostPopular(protocol.fit, corpus.n_movies)))
                scorers.append((AlsScorer.name,
                                als_scorer(spark, als_tuned, protocol, corpus.movie_ids)))
                ease = ease_scorer(protocol, corpus.n_movies, cfg)
                if ease is not None:
                    scorers.append((Ease.name, ease))
                models, tops = {}, {}
                for name, scorer in scorers:
                    top = tops[name] = rank(scorer, protocol, corpus.n_movies)
                    models[name] = protocol_metrics(protocol, top, popular, corpus.n_movies)
                    log.info("%s / %s: %s", protocol.name, name, models[name])
                    if protocol.name.startswith("held-out"):
                        curves[name] = recall_curve(protocol, top)
                        popularity[name] = top
                        popularity_counts = counts
                results["protocols"].append({
                    "name": protocol.name, "description": protocol.description,
                    "query_users": protocol.query.users, "models": models,
                    "comparisons": comparisons(protocol, tops)})
        results["recall_curves"] = curves
        with manifest.timed("report"):
            with io.names_storage_errors(f"{work}, the job's temporary directory (TMPDIR)"):
                plots = {"Recall@K, held-out users": os.path.join(out, "recall_at_k.png"),
                         "Popularity of recommendations": os.path.join(out, "popularity.png"),
                         "Movie embeddings": os.path.join(out, "movie_embeddings.png")}
                report.plot_recall_curves(curves, plots["Recall@K, held-out users"])
                report.plot_popularity(popularity, popularity_counts,
                                       plots["Popularity of recommendations"])
                report.plot_embeddings(two_tower.items, corpus.genres, two_tower.known,
                                       plots["Movie embeddings"])
                with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as fh:
                    json.dump(results, fh, indent=2)
                with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as fh:
                    fh.write(report.markdown(results, plots))
            io.copy_from_local(out, run_dir)
        manifest["report"] = io.join(run_dir, "report.md")
        manifest["headline"] = headline(results)
        artifacts.commit(root, STAGE, run_dir, manifest, config)
    return EvaluateResult(run_dir, manifest, results)


def _retrain(config: Config, preprocess_dir: str, corpus: Corpus, protocol: Protocol,
             work: str) -> TwoTower:
    from recsys.model.train import run_train

    root = os.path.join(work, "random-split")
    _split_histories(preprocess_dir, corpus, protocol, root)
    trained = run_train(config.replace(artifact_root=root))
    return TwoTower(trained.run_dir, corpus.movie_ids, os.path.join(work, "model-random"))


def headline(results: dict[str, Any]) -> dict[str, str]:
    """One line per protocol for the nightly summary: every model's figure on the
    protocol's first compared metric (the quality goal's: Recall@20, HR@10, top-10
    accuracy)."""
    lines = {}
    for proto in results["protocols"]:
        models = proto["models"]
        metric = compared_metrics(proto["name"])[0]
        lines[proto["name"]] = ", ".join(f"{m} {v[metric]:.4f}" for m, v in models.items()) \
            + f" ({metric})"
    return lines
