"""Stage 3 (DESIGN §4.3): build the exact and ScaNN searchers from a train run.

Writes ``<root>/index/<run_id>/``::

    exact/    brute-force searcher (ScaNN float32 brute force): the ground truth
    scann/    a tree with exact scoring in the searched leaves (up to 250,000 movies), or
              asymmetric hashing + re-ordering; sized to the catalog, tuned on real users
    similar_movies/  Parquet, every movie's index.similar_movies nearest other movies
                     (exact search), published by the score stage
    config.toml, manifest.json (train run, model version, settings, recall, timings,
    checksums), _SUCCESS

The build embeds a sample of real users (their last ``history_length`` ratings through
the exported user tower), measures ScaNN's recall@N against the exact searcher, records
it, and refuses to commit an index whose recall is below ``index.recall_floor``. Unless
given, the search setting that costs the most time — leaves searched for a tree with exact
scoring, candidates re-ordered for hashing — is tuned first on half the sampled users:
the cheapest value (:func:`recsys.index.searcher.search_ladder`) whose recall reaches
``index.recall_floor + index.recall_margin``; the recall recorded and checked against the
floor is then measured on the other half (where the tuned value falls short of the floor
there, the next values of the ladder are measured on that half up to the first that
reaches it: :func:`_checked`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, replace

import numpy as np

from recsys import artifacts, io
from recsys.config import Config
from recsys.index.searcher import (
    MovieSearcher, ScannSettings, recall_at_k, scann_settings, search_ladder, tune_search,
)
from recsys.index.similar import SIMILAR, nearest_movies, similar_table
from recsys.model.inputs import UserChunk
from recsys.model.serving import embed_histories, load_user_tower

log = logging.getLogger(__name__)
STAGE = "index"


class IndexRecallError(artifacts.ArtifactError):
    """The approximate index finds too few of the exact neighbours to be published."""


@dataclass
class IndexResult:
    run_dir: str
    manifest: artifacts.Manifest
    recall: float


def read_movie_embeddings(train_dir: str) -> tuple[np.ndarray, np.ndarray]:
    table = io.read_parquet(io.join(train_dir, "movie_embeddings"))
    ids = table.column("movie_id").to_numpy().astype(np.int64)
    col = table.column("embedding").combine_chunks()
    dim = len(col[0]) if len(col) else 0
    values = col.values.to_numpy(zero_copy_only=False).astype(np.float32)
    if values.size != ids.size * dim:
        raise artifacts.ArtifactError(f"{train_dir}/movie_embeddings has ragged embeddings")
    if not np.isfinite(values).all():  # a model trained before training refused such ones
        raise artifacts.ArtifactError(
            f"{train_dir}/movie_embeddings holds NaN or infinite values: that training "
            "diverged; train again (with a lower train.learning_rate)")
    return values.reshape(ids.size, dim), ids


def sample_users(histories_uri: str, n: int, seed: int) -> UserChunk:
    """About ``n`` users spread over every histories file, as raw ids (not model indices)."""
    parts = io.parquet_parts(histories_uri)
    per_part = max(1, -(-n // len(parts)))
    rng = np.random.default_rng(seed)
    picked = []
    for part in parts:
        table = io.read_parquet(part, columns=["user_id", "movie_ids", "ratings"])
        rows = np.sort(rng.choice(table.num_rows, size=min(per_part, table.num_rows),
                                  replace=False))
        sub = table.take(rows)
        m = sub.column("movie_ids").combine_chunks()
        r = sub.column("ratings").combine_chunks()
        off = m.offsets.to_numpy().astype(np.int64)
        picked.append(UserChunk(sub.column("user_id").to_numpy().astype(np.int64),
                                off - off[0],
                                m.values.to_numpy(zero_copy_only=False)[off[0]:off[-1]],
                                r.values.to_numpy(zero_copy_only=False)[off[0]:off[-1]]))
    from recsys.model.examples import concat_chunks

    return concat_chunks(picked)


#: A tree whose tuned search needs more than this share of its leaves is a poor partition:
#: another one is built (up to ``index.tree_builds``) and the cheapest to search is kept.
POOR_TREE_SHARE = 1 / 4


def _tuned_build(scann: MovieSearcher, settings: ScannSettings, emb: np.ndarray,
                 ids: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, cfg, info: dict,
                 manifest: artifacts.Manifest) -> tuple[MovieSearcher, ScannSettings]:
    """The built searcher with its cost setting tuned (:func:`tune_search`) to reach
    ``recall_floor + recall_margin`` on ``queries``; for a tree, rebuilt while the tuned
    search needs more than :data:`POOR_TREE_SHARE` of the leaves (ScaNN's partitions
    differ from build to build), keeping the build that searches fewest leaves."""
    target = cfg.recall_floor + cfg.recall_margin
    builds = []
    for attempt in range(cfg.tree_builds if settings.scoring == "brute" else 1):
        if attempt:
            scann = MovieSearcher.build(emb, ids, kind="scann", num_neighbors=cfg.num_neighbors,
                                        settings=settings, info=info)
        name, value, tried = tune_search(scann, queries, truth, target=target)
        builds.append((value, -tried[value], attempt, scann, tried))
        log.info("index: %s = %d (recall@%d by %s on %d users: %s)", name, value,
                 truth.shape[1], name, queries.shape[0],
                 ", ".join(f"{c}: {r:.4f}" for c, r in tried.items()))
        if settings.scoring != "brute" or value <= POOR_TREE_SHARE * settings.num_leaves:
            break
    value, _, kept, scann, tried = min(builds, key=lambda b: b[:3])
    manifest["search_tuning"] = {
        "setting": name, "target": round(target, 6), "users": int(queries.shape[0]),
        "recall_by_value": {str(c): round(r, 5) for c, r in tried.items()},
        "builds": len(builds), "kept_build": kept}
    if len(builds) > 1:
        manifest["search_tuning"]["tuned_value_by_build"] = [b[0] for b in builds]
    return scann.with_search(**{name: value}), replace(settings, **{name: value})


def _checked(scann: MovieSearcher, settings: ScannSettings, queries: np.ndarray,
             truth: np.ndarray, *, floor: float, manifest: artifacts.Manifest
             ) -> tuple[MovieSearcher, ScannSettings, float]:
    """(searcher, settings, recall@k on ``queries``) for a searcher whose cost setting was
    tuned on *other* users. The tuned value reached ``recall_floor + recall_margin`` on
    those; on these its recall can still fall below the floor: the smallest value of the
    ladder that passes on one half of a small sample is the one most likely to have passed
    by luck (on ml-latest-small, 305 users a half: 13 leaves of 194 gave 0.9957 on the
    tuning half and 0.9886 on the other, in 2 of 17 builds of one model). Then the next
    values of the ladder are measured on these users, up to the first that reaches the
    floor, and the steps are recorded (``search_tuning.stepped_up``)."""
    k = truth.shape[1]
    name, ladder = search_ladder(scann, k)
    tuned = value = getattr(settings, name)
    found, _ = scann.search(queries, k)
    first = recall = recall_at_k(found, truth)
    steps: dict[str, float] = {}
    for higher in (v for v in ladder if v > tuned):
        if recall >= floor:
            break
        found, _ = scann.search(queries, k, **{name: higher})
        recall = recall_at_k(found, truth)
        steps[str(higher)] = round(recall, 5)
        value = higher
    if steps:
        manifest["search_tuning"]["stepped_up"] = {
            "from": tuned, "recall": round(first, 5), "recall_by_value": steps}
        log.info("index: %s = %d gave recall@%d %.4f on the users it was not tuned on, below "
                 "the floor %.2f: stepped up to %d (%s)", name, tuned, k, first, floor, value,
                 ", ".join(f"{c}: {r:.4f}" for c, r in steps.items()))
        scann, settings = scann.with_search(**{name: value}), replace(settings, **{name: value})
    return scann, settings, recall


def run_index(config: Config, *, run_id: str | None = None,
              train_run: str | None = None) -> IndexResult:
    """Build, measure and commit the searchers for the latest (or the named) train run."""
    root = config.artifact_root
    cfg = config.index
    run_id, run_dir = artifacts.claim_run(root, STAGE, run_id)
    train_dir = artifacts.resolve(root, "train", train_run)
    train_manifest = artifacts.verify(train_dir)
    artifacts.check_writable(root, STAGE)
    manifest = artifacts.Manifest(STAGE, run_id, config)
    manifest["inputs"] = {"train_run": train_manifest["run_id"], "train_dir": train_dir,
                          "model_version": train_manifest["run_id"]}
    with tempfile.TemporaryDirectory(prefix="recsys-index-") as stage, \
            artifacts.failure_recorded(run_dir, manifest, scratch=stage):
        with manifest.timed("load"):
            emb, ids = read_movie_embeddings(train_dir)
            tower = load_user_tower(io.local_copy(train_dir, os.path.join(stage, "train")))
            preprocess_dir = train_manifest["inputs"]["preprocess_dir"]
            users = sample_users(io.join(preprocess_dir, "histories"),
                                 cfg.recall_sample_users, config.train.seed)
            queries = embed_histories(tower, users.user_ids, users.movies, users.ratings,
                                      users.offsets)
        info = {"model_version": train_manifest["run_id"]}
        with manifest.timed("build_exact"):
            exact = MovieSearcher.build(emb, ids, kind="exact", num_neighbors=cfg.num_neighbors,
                                        info=info)
        settings = scann_settings(len(ids), cfg.num_neighbors, scoring=cfg.scoring,
                                  leaves=cfg.leaves,
                                  leaves_to_search=cfg.leaves_to_search, reorder=cfg.reorder,
                                  dims_per_block=cfg.dims_per_block,
                                  anisotropic_threshold=cfg.anisotropic_threshold,
                                  spill_lambda=cfg.spill_lambda)
        k = min(cfg.num_neighbors, len(ids))
        with manifest.timed("measure_exact"):
            truth, _ = exact.search(queries, k)
        check = np.arange(queries.shape[0])
        with manifest.timed("build_scann"):
            scann = MovieSearcher.build(emb, ids, kind="scann", num_neighbors=cfg.num_neighbors,
                                        settings=settings, info=info)
            tuned, _ = search_ladder(scann, k)  # leaves_to_search or reorder
            tuned_here = getattr(cfg, tuned) <= 0
            if tuned_here:  # tuned on half the sampled users, measured on the others
                tune, check = check[0::2], check[1::2]
                scann, settings = _tuned_build(
                    scann, settings, emb, ids, queries[tune], truth[tune], cfg=cfg, info=info,
                    manifest=manifest)
        with manifest.timed("measure_recall"):
            if tuned_here:
                scann, settings, recall = _checked(scann, settings, queries[check],
                                                   truth[check], floor=cfg.recall_floor,
                                                   manifest=manifest)
            else:  # given settings are measured, never changed
                found, _ = scann.search(queries[check], k)
                recall = recall_at_k(found, truth[check])
        manifest["counts"] = {"movies": int(len(ids)), "dim": int(emb.shape[1]),
                              "recall_sample_users": int(check.size)}
        manifest["recall"] = {f"recall@{k}": round(recall, 5), "floor": cfg.recall_floor}
        manifest["settings"] = settings.to_dict()
        log.info("index: %d movies, ScaNN recall@%d = %.4f on %d users (floor %.2f)",
                 len(ids), k, recall, check.size, cfg.recall_floor)
        if recall < cfg.recall_floor:
            raise IndexRecallError(
                f"ScaNN recall@{k} is {recall:.4f}, below index.recall_floor = "
                f"{cfg.recall_floor}; not publishing (search more leaves: --set "
                f"index.leaves_to_search=N, or re-order more: --set index.reorder=N; the "
                f"manifest's search_tuning lists the recall of each value tried)")
        with manifest.timed("similar_movies"):
            near, near_scores = nearest_movies(exact, emb, ids, cfg.similar_movies)
            manifest["counts"]["similar_movies"] = int(near.shape[1])
        with manifest.timed("save"):
            with io.names_storage_errors(f"{stage}, the job's temporary directory (TMPDIR)"):
                exact.save(os.path.join(stage, "out", "exact"))
                scann.save(os.path.join(stage, "out", "scann"))
                io.write_parquet(similar_table(ids, near, near_scores),
                                 os.path.join(stage, "out", SIMILAR, "part-00000.parquet"))
            io.copy_from_local(os.path.join(stage, "out"), run_dir)
        artifacts.commit(root, STAGE, run_dir, manifest, config)
    return IndexResult(run_dir, manifest, recall)
