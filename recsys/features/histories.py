"""Per-user watch histories: every valid rating of a user, sorted by time.

Ratings are hash-partitioned by user (the one shuffle of preprocessing); each partition is
then sorted, de-duplicated and cut into per-user arrays with numpy inside ``mapInArrow``,
which is several times faster than a window + ``collect_list`` on 2 cores. A partition is
held in memory by its Python worker: size ``preprocess.history_files`` so that a
partition stays well under the worker's memory (25M ratings / 8 partitions = ~60 MB).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

HISTORY_COLUMNS = ("user_id", "movie_ids", "ratings", "timestamps", "num_ratings", "mean_rating")
_DUP_COLUMNS = ("dup_movie_ids", "dup_ratings", "dup_timestamps")

_SCHEMA = pa.schema([
    ("user_id", pa.int32()),
    ("movie_ids", pa.list_(pa.int32())),
    ("ratings", pa.list_(pa.float32())),
    ("timestamps", pa.list_(pa.int64())),
    ("num_ratings", pa.int32()),
    ("mean_rating", pa.float32()),
    ("dup_movie_ids", pa.list_(pa.int32())),
    ("dup_ratings", pa.list_(pa.float32())),
    ("dup_timestamps", pa.list_(pa.int64())),
])
SPARK_SCHEMA = (
    "user_id int, movie_ids array<int>, ratings array<float>, timestamps array<bigint>, "
    "num_ratings int, mean_rating float, dup_movie_ids array<int>, dup_ratings array<float>, "
    "dup_timestamps array<bigint>"
)
_OUT_USERS = 20_000  # users per output record batch


def _lists(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, typ))


def histories_from_arrays(
    users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, timestamps: np.ndarray
) -> pa.Table:
    """Group one partition's ratings by user.

    Of several ratings of one (user, movie), the latest is kept (equal times: the higher
    rating); the others are returned in the ``dup_*`` columns. Histories are sorted by
    time, ties by movie id.
    """
    n = users.size
    if n == 0:
        return _SCHEMA.empty_table()
    order = np.lexsort((ratings, timestamps, movies, users))
    u, m, r, t = users[order], movies[order], ratings[order], timestamps[order]
    keep = np.ones(n, dtype=bool)
    keep[:-1] = (u[:-1] != u[1:]) | (m[:-1] != m[1:])  # last of each (user, movie) run
    ku, km, kr, kt = u[keep], m[keep], r[keep], t[keep]
    order = np.lexsort((km, kt, ku))
    ku, km, kr, kt = ku[order], km[order], kr[order], kt[order]
    starts = np.flatnonzero(np.r_[True, ku[1:] != ku[:-1]])
    offsets = np.r_[starts, ku.size]
    counts = np.diff(offsets)
    user_ids = ku[starts]
    means = np.add.reduceat(kr.astype(np.float64), starts) / counts

    du, dm, dr, dt = u[~keep], m[~keep], r[~keep], t[~keep]
    dorder = np.lexsort((dm, dt, du))
    du, dm, dr, dt = du[dorder], dm[dorder], dr[dorder], dt[dorder]
    doffsets = np.searchsorted(du, user_ids, side="left")
    doffsets = np.r_[doffsets, du.size]

    return pa.table({
        "user_id": pa.array(user_ids, pa.int32()),
        "movie_ids": _lists(offsets, km, pa.int32()),
        "ratings": _lists(offsets, kr, pa.float32()),
        "timestamps": _lists(offsets, kt, pa.int64()),
        "num_ratings": pa.array(counts, pa.int32()),
        "mean_rating": pa.array(means, pa.float32()),
        "dup_movie_ids": _lists(doffsets, dm, pa.int32()),
        "dup_ratings": _lists(doffsets, dr, pa.float32()),
        "dup_timestamps": _lists(doffsets, dt, pa.int64()),
    }, schema=_SCHEMA)


def _partition_histories(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    table = pa.Table.from_batches(list(batches))
    if table.num_rows == 0:
        return
    col = lambda name: table.column(name).to_numpy()  # noqa: E731
    out = histories_from_arrays(col("user_id"), col("movie_id"), col("rating"), col("timestamp"))
    yield from out.to_batches(max_chunksize=_OUT_USERS)


def build_histories(ratings: DataFrame, partitions: int) -> DataFrame:
    """Histories plus the ``dup_*`` columns (quarantined duplicate pairs) per user.

    ``ratings``: valid rows with ``user_id, movie_id, rating, timestamp``.
    """
    shuffled = ratings.select("user_id", "movie_id", "rating", "timestamp").repartition(
        partitions, "user_id"
    )
    return shuffled.mapInArrow(_partition_histories, SPARK_SCHEMA)


def duplicate_rows(built: DataFrame) -> DataFrame:
    """The duplicate pairs removed from the histories, one row each."""
    dups = built.where(F.size("dup_movie_ids") > 0).select(
        "user_id",
        F.explode(F.arrays_zip(
            F.col("dup_movie_ids").alias("movie_id"),
            F.col("dup_ratings").alias("rating"),
            F.col("dup_timestamps").alias("timestamp"),
        )).alias("d"),
    )
    return dups.select("user_id", "d.movie_id", "d.rating", "d.timestamp")
