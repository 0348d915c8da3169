"""The exported user tower: a SavedModel that takes raw ids and returns embeddings.

``history`` models export ``embed(movie_ids int64 [B, W], ratings float32 [B, W])``:
left-padded raw MovieLens movie ids (0 = padding, most recent last) and their ratings;
only the last ``history_length`` columns are read, and ids the model does not know are
treated as padding. The history tower is exported in its serving form
(:class:`recsys.model.folded.FoldedHistoryTower`: the same function, cheaper to run).
``mf`` models export ``embed_users(user_ids int64 [B])``.

Beside the SavedModel, history models get ``user_tower.npz`` (the same serving form as
plain arrays, computed in NumPy by :mod:`recsys.model.serving`, which is what scoring
loads: no TensorFlow in the Spark workers), and ``model.json`` records the kind,
dimensions and the training run (the model version), which scoring checks before it
trusts the files. Loading is :func:`recsys.model.serving.load_user_tower`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from recsys.model.folded import FoldedHistoryTower
from recsys.model.serving import MODEL_INFO, SAVED_MODEL, SERVING_ARRAYS


def _index_table(ids: np.ndarray) -> tf.lookup.StaticHashTable:
    """Raw id -> model index (position + 1); unknown ids -> 0 (padding / unknown)."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(ids, np.int64)),
            tf.constant(np.arange(1, len(ids) + 1, dtype=np.int32))),
        default_value=0)


class _HistoryExport(tf.Module):
    def __init__(self, tower: tf.keras.Model, movie_ids: np.ndarray) -> None:
        super().__init__()
        self.tower = FoldedHistoryTower(tower)
        self.table = _index_table(movie_ids)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.int64, name="movie_ids"),
        tf.TensorSpec([None, None], tf.float32, name="ratings"),
    ])
    def embed(self, movie_ids, ratings):
        return self.tower((self.table.lookup(movie_ids), ratings))


class _UserIdExport(tf.Module):
    def __init__(self, tower: tf.keras.Model, user_ids: np.ndarray) -> None:
        super().__init__()
        self.tower = tower
        self.table = _index_table(user_ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_ids")])
    def embed_users(self, user_ids):
        return self.tower(self.table.lookup(user_ids), training=False)


def save_user_tower(directory: str, tower: tf.keras.Model, *, kind: str, ids: np.ndarray,
                    info: dict[str, Any]) -> None:
    """Write ``<directory>/user_tower`` (SavedModel), for history models
    ``<directory>/user_tower.npz`` (NumPy serving form), and ``<directory>/model.json``.

    ``ids`` are the raw movie ids by model index (history) or user ids by user index (mf).
    """
    os.makedirs(directory, exist_ok=True)
    if kind == "history":
        history = _HistoryExport(tower, ids)
        module: tf.Module = history
        signatures = {"serving_default": history.embed}
        np.savez(os.path.join(directory, SERVING_ARRAYS), **history.tower.arrays(),
                 movie_ids=np.asarray(ids, np.int64))
    else:
        module = _UserIdExport(tower, ids)
        signatures = {"serving_default": module.embed_users}
    tf.saved_model.save(module, os.path.join(directory, SAVED_MODEL), signatures=signatures)
    with open(os.path.join(directory, MODEL_INFO), "w", encoding="utf-8") as fh:
        json.dump({"kind": kind, **info}, fh, indent=2)
        fh.write("\n")
