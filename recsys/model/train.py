"""Stage 2 (DESIGN §4.2): train the two-tower model and write its artifacts.

Reads the preprocess run (histories, movie table, vocabularies, splits) and writes
``<root>/train/<run_id>/``::

    user_tower/              SavedModel: raw history arrays -> user embedding (see export)
    user_tower.npz           history models: the same tower as arrays, which scoring
                             computes in NumPy (see serving)
    model.json               kind, dimensions, history length, model_version (= run id)
    movie_embeddings/        Parquet: movie_id int, embedding array<float>
    vocab/movies.parquet     movie_id, index (model index), train_ratings
    vocab/title_tokens.txt   title-token vocabulary (line i = token index i + 1)
    vocab/genres.txt         genre vocabulary
    vocab/users.parquet      mf models: user_id, the users the model can embed
    metrics.json             per-epoch loss; validation metrics of the model and of
                             most-popular on the held-out validation users
    tensorboard/             TensorBoard logs
    config.toml, manifest.json (checksums of every file), _SUCCESS

Everything is written to a local staging directory first and copied to the artifact
root (any URI) before the run is committed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import tensorflow as tf

from recsys import artifacts, io
from recsys.config import Config
from recsys.data.errors import InputDataError
from recsys.evaluation.metrics import most_popular_scores, ranking_metrics, top_k_exact
from recsys.model import export
from recsys.model.errors import UnusableModelError
from recsys.model.examples import (
    VALIDATION, CorpusScan, ExampleStream, HeldOutUsers, Splits, held_out_users,
)
from recsys.model.inputs import MovieCatalog, windows
from recsys.model.retrieval import TwoTowerModel
from recsys.model.serving import MODEL_USERS
from recsys.model.towers import HistoryUserTower, IdUserTower, MovieTower

log = logging.getLogger(__name__)
STAGE = "train"


@dataclass
class Trained:
    """A trained model in memory, with what is needed to use and evaluate it."""

    model: TwoTowerModel
    catalog: MovieCatalog
    stream: ExampleStream
    scan: CorpusScan
    history: dict[str, list[float]]

    def movie_embeddings(self, batch_size: int = 8192) -> np.ndarray:
        """[V + 1, D]: row i is model index i (row 0, padding, is zeros)."""
        n = self.catalog.size + 1
        out = [np.zeros((1, self.model.movie_tower.head.layers[-1].units), np.float32)]
        for start in range(1, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n), dtype=np.int32)
            out.append(self.model.movie_tower(idx, training=False).numpy())
        return np.vstack(out)

    def user_embeddings(self, users: HeldOutUsers, batch_size: int = 2048) -> np.ndarray:
        """Embeddings of held-out users from their input histories (or ids, for mf)."""
        chunk = users.inputs
        n = chunk.user_ids.size
        out = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if self.model.kind == "history":
                m, r = windows(chunk.movies, chunk.ratings, chunk.offsets[start:stop],
                               chunk.offsets[start + 1:stop + 1],
                               self.model.user_tower.history_length)
                out.append(self.model.user_tower((m, r), training=False).numpy())
            else:
                idx = self.stream.user_index(chunk.user_ids[start:stop])
                out.append(self.model.user_tower(idx, training=False).numpy())
        dim = self.model.movie_tower.head.layers[-1].units
        return np.vstack(out) if out else np.zeros((0, dim), np.float32)


@dataclass
class TrainResult:
    run_dir: str
    manifest: artifacts.Manifest
    metrics: dict[str, Any]
    trained: Trained


def load_inputs(config: Config, preprocess_dir: str) -> tuple[MovieCatalog, Splits, str]:
    catalog = MovieCatalog.from_tables(
        io.read_parquet(io.join(preprocess_dir, "movies"),
                        columns=["movie_id", "title", "year", "genres", "genome"]),
        io.read_parquet(io.join(preprocess_dir, "vocab/movies")),
        config.model,
    )
    splits = Splits(io.read_parquet(io.join(preprocess_dir, "splits")), catalog)
    return catalog, splits, io.join(preprocess_dir, "histories")


def _dataset(stream: ExampleStream, steps: int) -> tf.data.Dataset:
    cfg = stream.model
    k = stream.train.targets_per_window
    spec = {"target": tf.TensorSpec([None, k], tf.int32),
            "target_mask": tf.TensorSpec([None, k], tf.bool)}
    if cfg.kind == "history":
        spec["history_movies"] = tf.TensorSpec([None, cfg.history_length], tf.int32)
        spec["history_ratings"] = tf.TensorSpec([None, cfg.history_length], tf.float32)
        spec["target_column"] = tf.TensorSpec([None, k], tf.int32)
    else:
        spec["user_index"] = tf.TensorSpec([None], tf.int32)
    epochs = itertools.count()

    def generate():
        yield from stream.epoch(next(epochs))

    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(4)


def train_model(config: Config, catalog: MovieCatalog, splits: Splits, histories_uri: str, *,
                log_dir: str | None = None, verbose: int | None = None,
                validation_users: HeldOutUsers | None = None) -> Trained:
    """Train the configured model on the training users' histories."""
    m_cfg, t_cfg = config.model, config.train
    tf.keras.utils.set_random_seed(t_cfg.seed)
    stream = ExampleStream(histories_uri, catalog, splits, model=m_cfg, train=t_cfg)
    scan = stream.scan()
    if scan.examples_per_epoch == 0:
        raise InputDataError("no training examples: every user is held out or has fewer "
                             "than 3 ratings")
    steps = math.ceil(scan.rows_per_epoch / t_cfg.batch_size)
    log.info("training %s model: %d training users, about %d examples per epoch in %d steps "
             "of %d rows", m_cfg.kind, scan.train_users, scan.examples_per_epoch, steps,
             t_cfg.batch_size)

    movie_tower = MovieTower(catalog, m_cfg, train_counts=scan.train_counts)
    if m_cfg.kind == "history":
        shared = movie_tower.id_embedding if m_cfg.share_embeddings else None
        user_tower: tf.keras.Model = HistoryUserTower(catalog.size, m_cfg, movie_embedding=shared)
    else:
        user_tower = IdUserTower(splits.user_ids.size, m_cfg)
    model = TwoTowerModel(user_tower, movie_tower, model=m_cfg, train=t_cfg,
                          target_counts=scan.target_counts)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=t_cfg.learning_rate))
    trained = Trained(model, catalog, stream, scan, {})

    callbacks: list[tf.keras.callbacks.Callback] = []
    validation = validation_users if validation_users is not None else \
        held_out_users(stream, VALIDATION)
    if validation.user_ids.size:
        callbacks.append(_SelectBest(trained, validation, t_cfg))
    else:
        log.warning("no validation users: keeping the last epoch's weights")
    if log_dir is not None:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    fit = model.fit(_dataset(stream, steps), epochs=t_cfg.epochs, verbose=verbose,
                    callbacks=callbacks)
    trained.history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    for cb in callbacks:
        if isinstance(cb, _SelectBest):
            trained.history["best_epoch"] = [cb.best_epoch + 1]
    return trained


class _SelectBest(tf.keras.callbacks.Callback):
    """Validation metric after every epoch; stop after ``patience`` epochs without
    improvement and restore the best epoch's weights (test users stay untouched)."""

    def __init__(self, trained: "Trained", users: HeldOutUsers, config) -> None:  # noqa: ANN001
        super().__init__()
        self.trained, self.users = trained, users
        self.metric, self.patience = config.select_metric, config.patience
        self.batch_size = config.eval_batch_size
        self.best, self.best_epoch, self.best_weights = -np.inf, -1, None

    def on_epoch_end(self, epoch: int, logs=None) -> None:  # noqa: ANN001
        value = validation_metrics(self.trained, self.users, batch_size=self.batch_size,
                                   baselines=False)["model"][self.metric]
        if logs is not None:
            logs[f"val_{self.metric}"] = value
        log.info("epoch %d: validation %s = %.4f", epoch + 1, self.metric, value)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()
        elif self.patience and epoch - self.best_epoch >= self.patience:
            log.info("no improvement for %d epochs: stopping", self.patience)
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:  # noqa: ANN001
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            log.info("kept epoch %d (validation %s = %.4f)", self.best_epoch + 1, self.metric,
                     self.best)


def validation_metrics(trained: Trained, users: HeldOutUsers, *, k: int = 100,
                       batch_size: int = 512, baselines: bool = True
                       ) -> dict[str, dict[str, float]]:
    """Held-out-users metrics (seen excluded) for the model and for most-popular."""
    seen = (users.inputs.offsets, users.inputs.movies.astype(np.int64))
    n = users.user_ids.size
    movie_emb = trained.movie_embeddings()
    user_emb = trained.user_embeddings(users)
    for name, emb in (("movie", movie_emb), ("validation users'", user_emb)):
        if not np.isfinite(emb).all():
            raise UnusableModelError(
                f"the model's {name} embeddings hold NaN or infinite values: the training "
                f"diverged; lower train.learning_rate (now "
                f"{trained.stream.train.learning_rate:g}) and train again")

    ranked, _ = top_k_exact(lambda rows: user_emb[rows] @ movie_emb.T, n, k, seen,
                            batch_size=batch_size)
    out = {"model": ranking_metrics(ranked, users.truth)}
    if baselines:
        popular, _ = top_k_exact(most_popular_scores(trained.scan.train_counts), n, k, seen,
                                 batch_size=batch_size)
        out["most_popular"] = ranking_metrics(popular, users.truth)
    return out


#: Fewer validation users than this, and train.min_recall_vs_popular is not checked.
CHECK_MIN_USERS = 20


def check_against_popular(validation: dict[str, dict[str, float]], *, metric: str,
                          min_ratio: float) -> None:
    """``train.min_recall_vs_popular``: the model's ``metric`` on the validation users
    must reach ``min_ratio`` times most-popular's, or :class:`UnusableModelError`."""
    model, popular = validation.get("model", {}), validation.get("most_popular", {})
    users = int(model.get("users", 0))
    if min_ratio <= 0 or users < CHECK_MIN_USERS or metric not in popular:
        return
    if model[metric] < min_ratio * popular[metric]:
        raise UnusableModelError(
            f"the trained model's validation {metric} is {model[metric]:.4f} on {users} "
            f"users, below train.min_recall_vs_popular = {min_ratio:g} times "
            f"most-popular's {popular[metric]:.4f} there: it is not published, and the "
            "latest model stays the one scored. Look at the training's loss and settings "
            "(a learning rate too high or too low, too few epochs), or set "
            "train.min_recall_vs_popular=0 to publish it all the same")


def _write_outputs(stage: str, trained: Trained, config: Config, run_id: str,
                   metrics: dict[str, Any]) -> None:
    catalog = trained.catalog
    info = {
        "model_version": run_id,
        "embedding_dim": config.model.embedding_dim,
        "history_length": config.model.history_length,
        "normalize": config.model.normalize,
        "num_movies": catalog.size,
    }
    if trained.model.kind == "history":
        ids = catalog.movie_ids
    else:
        ids = trained.stream.splits.user_ids
    export.save_user_tower(stage, trained.model.user_tower, kind=trained.model.kind, ids=ids,
                           info=info)

    emb = trained.movie_embeddings()[1:]
    dim = emb.shape[1]
    os.makedirs(os.path.join(stage, "movie_embeddings"), exist_ok=True)
    table = pa.table({
        "movie_id": pa.array(catalog.movie_ids.astype(np.int32)),
        "embedding": pa.ListArray.from_arrays(
            pa.array(np.arange(0, emb.size + 1, dim, dtype=np.int32)),
            pa.array(emb.ravel().astype(np.float32))),
    })
    import pyarrow.parquet as pq

    pq.write_table(table, os.path.join(stage, "movie_embeddings", "part-00000.parquet"))

    os.makedirs(os.path.join(stage, "vocab"), exist_ok=True)
    if trained.model.kind != "history":  # who the user-id embedding has a row for
        pq.write_table(pa.table({"user_id": pa.array(ids.astype(np.int64))}),
                       os.path.join(stage, MODEL_USERS))
    pq.write_table(pa.table({
        "movie_id": pa.array(catalog.movie_ids.astype(np.int32)),
        "index": pa.array(np.arange(1, catalog.size + 1, dtype=np.int32)),
        "train_ratings": pa.array(trained.scan.train_counts[1:].astype(np.int64)),
    }), os.path.join(stage, "vocab", "movies.parquet"))
    for name, words in (("title_tokens.txt", catalog.title_vocab), ("genres.txt", catalog.genres)):
        with open(os.path.join(stage, "vocab", name), "w", encoding="utf-8") as fh:
            fh.write("".join(w + "\n" for w in words))
    with open(os.path.join(stage, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=2)
        fh.write("\n")


def run_train(config: Config, *, run_id: str | None = None,
              preprocess_run: str | None = None) -> TrainResult:
    """Train on the latest (or the named) preprocess run and commit a ``train`` run."""
    root = config.artifact_root
    run_id, run_dir = artifacts.claim_run(root, STAGE, run_id)  # writes nothing yet
    # the input is checked before the run starts: a missing or corrupt one leaves no run
    source = artifacts.resolve(root, "preprocess", preprocess_run)
    trained_on = artifacts.verify(source)["run_id"]
    artifacts.check_writable(root, STAGE)  # before minutes (hours at full scale) of training
    manifest = artifacts.Manifest(STAGE, run_id, config)
    manifest["inputs"] = {"preprocess_run": trained_on, "preprocess_dir": source}
    with tempfile.TemporaryDirectory(prefix="recsys-train-") as stage, \
            artifacts.failure_recorded(run_dir, manifest, scratch=stage):
        with manifest.timed("load_inputs"):
            catalog, splits, histories = load_inputs(config, source)
        with manifest.timed("fit"):
            users = held_out_users(
                ExampleStream(histories, catalog, splits, model=config.model, train=config.train),
                VALIDATION)
            trained = train_model(
                config, catalog, splits, histories, validation_users=users,
                log_dir=os.path.join(stage, "tensorboard") if config.train.tensorboard else None)
        with manifest.timed("validate"):
            validation = validation_metrics(trained, users,
                                            batch_size=config.train.eval_batch_size)
        metrics = {"history": trained.history, "validation": validation}
        manifest["metrics"] = metrics  # before the check: a run it fails keeps them too
        check_against_popular(validation, metric=config.train.select_metric,
                              min_ratio=config.train.min_recall_vs_popular)
        examples = trained.stream.examples_drawn
        manifest["counts"] = {
            "movies": catalog.size,
            "train_users": trained.scan.train_users,
            "validation_users": int(users.user_ids.size),
            "examples_per_epoch": trained.scan.examples_per_epoch,
            "epochs": len(trained.history.get("loss", [])),
            "examples": examples,
            "examples_per_s": round(examples / max(manifest["timings_s"]["fit"], 1e-9), 1),
        }
        with manifest.timed("export"):
            with io.names_storage_errors(f"{stage}, the job's temporary directory (TMPDIR)"):
                _write_outputs(stage, trained, config, run_id, metrics)
            io.copy_from_local(stage, run_dir)
        artifacts.commit(root, STAGE, run_dir, manifest, config)
    return TrainResult(run_dir, manifest, metrics, trained)
