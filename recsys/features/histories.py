"""Per-user watch histories: every valid rating of a user, sorted by time."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

HISTORY_COLUMNS = ("user_id", "movie_ids", "ratings", "timestamps")


def build_histories(ratings: DataFrame) -> DataFrame:
    """``user_id``, ``movie_ids``, ``ratings``, ``timestamps`` (sorted by time, ties by
    movie id), ``num_ratings`` and ``mean_rating``.

    ``ratings`` must hold valid rows only; when it is already hash-partitioned by
    ``user_id`` this aggregation needs no further shuffle.
    """
    events = F.array_sort(F.collect_list(F.struct("timestamp", "movie_id", "rating")))
    grouped = ratings.groupBy("user_id").agg(
        events.alias("_events"), F.avg("rating").cast("float").alias("mean_rating")
    )
    return grouped.select(
        "user_id",
        F.col("_events.movie_id").alias("movie_ids"),
        F.col("_events.rating").alias("ratings"),
        F.col("_events.timestamp").alias("timestamps"),
        F.size("_events").alias("num_ratings"),
        "mean_rating",
    )
