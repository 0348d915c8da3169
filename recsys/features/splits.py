"""The evaluation split assignment (DESIGN §6), decided once per corpus in preprocessing.

Deterministic for a seed and independent of partitioning: every random choice is a hash
of (seed, user) or (seed, user, movie), never a Spark ``rand()``.

Columns, one row per user:

* ``role`` — ``train``, ``validation`` or ``test``. Only users with at least
  ``min_positives`` ratings >= ``positive_threshold`` can be held out; validation and
  test users never appear in training (strong generalization, Liang et al. 2018).
* ``holdout_movie_ids`` — for held-out users, a random ``holdout_fraction`` (at least
  one) of their positives: what the model must predict. Empty for training users.
* ``last_movie_id`` / ``last_timestamp`` — the user's last rating by time (ties broken
  by movie id), the target of the temporal next-item protocol.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys.config import SplitConfig

_BUCKETS = 1_000_000


def _unit(*cols: Column) -> Column:
    """A uniform number in [0, 1) from a hash of the columns."""
    return F.pmod(F.xxhash64(*cols), F.lit(_BUCKETS)) / F.lit(float(_BUCKETS))


def assign_splits(histories: DataFrame, config: SplitConfig) -> DataFrame:
    seed = F.lit(config.seed)
    pairs = F.arrays_zip(F.col("movie_ids").alias("m"), F.col("ratings").alias("r"))
    positives = F.transform(
        F.filter(pairs, lambda p: p["r"] >= config.positive_threshold), lambda p: p["m"]
    )
    n_pos = F.size(positives)
    u = _unit(seed, F.lit("user"), F.col("user_id"))
    eligible = n_pos >= config.min_positives
    test_cut = config.test_users_fraction
    val_cut = config.test_users_fraction + config.validation_users_fraction
    role = (
        F.when(eligible & (u < test_cut), F.lit("test"))
        .when(eligible & (u < val_cut), F.lit("validation"))
        .otherwise(F.lit("train"))
    )
    keyed = F.array_sort(
        F.transform(
            positives,
            lambda m: F.struct(
                F.xxhash64(seed, F.lit("holdout"), F.col("user_id"), m).alias("h"), m.alias("m")
            ),
        )
    )
    n_hold = F.greatest(F.lit(1), F.round(n_pos * config.holdout_fraction).cast("int"))
    holdout = F.transform(F.slice(keyed, 1, n_hold), lambda s: s["m"])
    last = F.size("movie_ids")
    return histories.select(
        "user_id",
        role.alias("role"),
        F.when(role == "train", F.array().cast("array<int>"))
        .otherwise(F.array_sort(holdout))
        .alias("holdout_movie_ids"),
        F.element_at("movie_ids", last).alias("last_movie_id"),
        F.element_at("timestamps", last).alias("last_timestamp"),
    )
