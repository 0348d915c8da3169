"""The two towers (DESIGN §5), separate from the retrieval task.

* :class:`HistoryUserTower` — the watch-history user tower: embeddings of the last L
  rated movies, each with the user-mean-centred rating concatenated, multi-head
  self-attention under a padding (and causal) mask, average pooling, dense layers. It
  has no user id, so a user never seen in training is embedded from their history alone.
* :class:`IdUserTower` — a user-id embedding (matrix-factorization baseline, as in the
  TFRS basic retrieval tutorial).
* :class:`MovieTower` — movie-id embedding plus content: genres, title tokens, release
  year and genome tag relevance. Movies with too few training ratings share the id row
  0, so a new movie is placed by its content.

Inputs are model indices (see :mod:`recsys.model.inputs`); 0 is padding.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from recsys.config import ModelConfig
from recsys.model.inputs import MovieCatalog

keras = tf.keras


def _head(layers: tuple[int, ...], out_dim: int, name: str) -> keras.Sequential:
    stack = [keras.layers.Dense(units, activation="relu") for units in layers]
    return keras.Sequential([*stack, keras.layers.Dense(out_dim)], name=name)


def _finish(x: tf.Tensor, normalize: bool) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1) if normalize else x


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over axis 1 of ``values`` [B, L, ...] where ``mask`` [B, L] is 1; 0 if none."""
    mask = tf.cast(mask, values.dtype)
    while len(mask.shape) < len(values.shape):
        mask = mask[..., None]
    total = tf.reduce_sum(values * mask, axis=1)
    count = tf.reduce_sum(mask, axis=1)
    return total / tf.maximum(count, 1.0)


class HistoryWindow(NamedTuple):
    movies: tf.Tensor  # int [B, W]: the last history_length columns, 0 = padding
    weight: tf.Tensor  # float [B, W]: 1 where a column holds a rating
    count: tf.Tensor  # float [B, W]: ratings in columns <= j
    mean: tf.Tensor  # float [B, W]: mean rating of columns <= j
    centred: tf.Tensor  # float [B, W, 1]: each rating minus the mean up to it (0 on padding)
    allowed: tf.Tensor  # bool [B, W, W]: column q may attend to column s (both real, s <= q)


def history_window(inputs, history_length: int) -> HistoryWindow:
    """What the history tower derives from (movies, ratings) before any weight is applied:
    shared by the Keras tower and its serving form (:mod:`recsys.model.folded`)."""
    movies, ratings = inputs
    movies = movies[:, -history_length:]
    ratings = tf.cast(ratings[:, -history_length:], tf.float32)
    mask = movies > 0
    weight = tf.cast(mask, tf.float32)
    count = tf.cumsum(weight, axis=1)
    mean = tf.cumsum(ratings * weight, axis=1) / tf.maximum(count, 1.0)
    centred = tf.where(mask, ratings - mean, 0.0)[..., None]
    width = tf.shape(movies)[1]
    causal = tf.cast(tf.linalg.band_part(tf.ones([width, width]), -1, 0), tf.bool)
    allowed = mask[:, :, None] & mask[:, None, :] & causal[None]
    return HistoryWindow(movies, weight, count, mean, centred, allowed)


def user_state(pooled: tf.Tensor, mean: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """The head's input: pooled attention output, mean rating and log rating count."""
    return tf.concat([pooled, mean[..., None] / 5.0, tf.math.log1p(count)[..., None] / 5.0],
                     axis=-1)


class HistoryUserTower(keras.Model):
    """[history_movies int32 [B, L], history_ratings float32 [B, L]] -> [B, D]."""

    def __init__(self, num_movies: int, config: ModelConfig,
                 movie_embedding: keras.layers.Embedding | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history_length = config.history_length
        self.normalize = config.normalize
        self.movie_embedding = movie_embedding or keras.layers.Embedding(
            num_movies + 1, config.hidden_dim, name="history_movie_embedding")
        self.dropout = keras.layers.Dropout(config.dropout)
        self.project = keras.layers.Dense(config.hidden_dim, name="project")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=config.attention_heads,
            key_dim=config.hidden_dim // config.attention_heads, name="self_attention")
        self.norm = keras.layers.LayerNormalization(name="norm")
        self.head = _head(config.tower_layers, config.embedding_dim, "user_head")

    def features(self, inputs, training: bool = False) -> tf.Tensor:
        """Per-column user state [B, L, F]: column j summarizes columns <= j only.

        Causal self-attention (a column attends to itself and earlier, non-padding
        columns), prefix-mean rating centring and prefix average pooling make column j
        the user as seen just after their j-th rating of the window, so one pass over a
        window gives the query for every target in it, and no target can see itself or
        anything later.
        """
        w = history_window(inputs, self.history_length)
        x = self.project(tf.concat([self.movie_embedding(w.movies), w.centred], axis=-1))
        x = self.dropout(x, training=training)
        x = self.norm(x + self.attention(x, x, attention_mask=w.allowed, training=training))
        pooled = tf.cumsum(x * w.weight[..., None], axis=1) / tf.maximum(w.count, 1.0)[..., None]
        return user_state(pooled, w.mean, w.count)

    def call(self, inputs, training: bool = False) -> tf.Tensor:
        """The user after the whole (left-padded) history: the last column's state."""
        state = self.features(inputs, training=training)[:, -1]
        return _finish(self.head(state, training=training), self.normalize)

    def at_columns(self, inputs, columns, training: bool = False) -> tf.Tensor:
        """[B, k, D]: the user as of each of ``columns`` [B, k] of the window."""
        state = tf.gather(self.features(inputs, training=training), columns, batch_dims=1)
        return _finish(self.head(state, training=training), self.normalize)


class IdUserTower(keras.Model):
    """user_index int32 [B] -> [B, D] (index 0 = unknown user)."""

    def __init__(self, num_users: int, config: ModelConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalize = config.normalize
        self.user_embedding = keras.layers.Embedding(num_users + 1, config.embedding_dim,
                                                     name="user_embedding")

    def call(self, user_index, training: bool = False) -> tf.Tensor:
        return _finish(self.user_embedding(user_index), self.normalize)


class MovieTower(keras.Model):
    """movie model index int32 [B] -> [B, D], from the id embedding and content features."""

    def __init__(self, catalog: MovieCatalog, config: ModelConfig,
                 train_counts: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalize = config.normalize
        n = catalog.size + 1
        id_rows = np.arange(n, dtype=np.int32)
        if train_counts is not None:
            id_rows[np.asarray(train_counts)[:n] < config.min_ratings_for_id] = 0
        self.id_rows = tf.constant(id_rows)
        self.genre_ids = tf.constant(catalog.genre_ids)
        self.title_tokens = tf.constant(catalog.title_tokens)
        self.year_bucket = tf.constant(catalog.year_bucket)
        self.genome_rows = tf.constant(catalog.genome_rows)
        self.has_genome = catalog.genome.shape[1] > 0
        self.genome = tf.constant(catalog.genome) if self.has_genome else None

        self.id_embedding = keras.layers.Embedding(n, config.hidden_dim, name="movie_id_embedding")
        self.genre_embedding = keras.layers.Embedding(len(catalog.genres) + 1, 16,
                                                      name="genre_embedding")
        self.title_embedding = keras.layers.Embedding(len(catalog.title_vocab) + 1, 32,
                                                      name="title_embedding")
        self.year_embedding = keras.layers.Embedding(64, 8, name="year_embedding")
        self.genome_projection = keras.layers.Dense(32, name="genome_projection") \
            if self.has_genome else None
        self.dropout = keras.layers.Dropout(config.dropout)
        self.head = _head(config.tower_layers, config.embedding_dim, "movie_head")

    def call(self, movie_index, training: bool = False) -> tf.Tensor:
        idx = tf.cast(movie_index, tf.int32)
        genres = tf.gather(self.genre_ids, idx)
        tokens = tf.gather(self.title_tokens, idx)
        parts = [
            self.id_embedding(tf.gather(self.id_rows, idx)),
            masked_mean(self.genre_embedding(genres), genres > 0),
            masked_mean(self.title_embedding(tokens), tokens > 0),
            self.year_embedding(tf.gather(self.year_bucket, idx)),
        ]
        if self.has_genome:
            rows = tf.gather(self.genome_rows, idx)
            present = tf.cast(rows > 0, tf.float32)[:, None]
            parts.append(self.genome_projection(tf.gather(self.genome, rows)) * present)
            parts.append(present)
        x = self.dropout(tf.concat(parts, axis=-1), training=training)
        return _finish(self.head(x, training=training), self.normalize)
