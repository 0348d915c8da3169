"""The retrieval task around the two towers (TFRS ``tasks.Retrieval``, DESIGN §5).

In-batch softmax: every other target in the batch is a negative. Popular movies are
negatives more often than uniform sampling would make them, which the log-Q correction
undoes (each score minus the log of its movie's sampling probability); a batch that
holds the same movie twice would otherwise push a user away from their own target,
which accidental-hit removal prevents. Top-K metrics (``FactorizedTopK``) are left out of
training, where they would cost a full catalog scan per batch; validation computes them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys.config import ModelConfig, TrainConfig


class TwoTowerModel(tfrs.models.Model):
    def __init__(self, user_tower: tf.keras.Model, movie_tower: tf.keras.Model, *,
                 model: ModelConfig, train: TrainConfig,
                 target_counts: np.ndarray | None = None) -> None:
        super().__init__()
        self.kind = model.kind
        self.user_tower = user_tower
        self.movie_tower = movie_tower
        self.task = tfrs.tasks.Retrieval(
            temperature=model.temperature if model.normalize else None,
            remove_accidental_hits=train.remove_accidental_hits,
        )
        self.remove_accidental_hits = train.remove_accidental_hits
        self.sampling_probability = None
        if train.logq_correction:
            if target_counts is None:
                raise ValueError("log-Q correction needs the movies' target counts")
            counts = np.asarray(target_counts, np.float64)
            prob = np.maximum(counts, 1.0) / max(counts.sum(), 1.0)
            self.sampling_probability = tf.constant(prob.astype(np.float32))

    def queries(self, features, training: bool = False) -> tf.Tensor:
        """[B, k, D]: the query for each target slot of each row."""
        if self.kind == "history":
            return self.user_tower.at_columns(
                (features["history_movies"], features["history_ratings"]),
                features["target_column"], training=training)
        users = self.user_tower(features["user_index"], training=training)
        return tf.repeat(users[:, None, :], tf.shape(features["target"])[1], axis=1)

    def compute_loss(self, features, training: bool = False) -> tf.Tensor:
        mask = features["target_mask"]
        target = tf.boolean_mask(features["target"], mask)
        query = tf.boolean_mask(self.queries(features, training=training), mask)
        candidates = self.movie_tower(target, training=training)
        extra = {}
        if self.sampling_probability is not None:
            extra["candidate_sampling_probability"] = tf.gather(self.sampling_probability, target)
        if self.remove_accidental_hits:
            extra["candidate_ids"] = target
        return self.task(query, candidates, compute_metrics=False, **extra)
