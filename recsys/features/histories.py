"""Per-user watch histories, the split assignment and the ratings' rejects, in one pass.

Tagged ratings (valid and invalid rows) are hash-partitioned by user: the one shuffle of
preprocessing. Each partition is then sorted, de-duplicated and cut into per-user arrays
with numpy inside ``mapInArrow`` (several times faster than a window + ``collect_list``
on 2 cores). Besides one row per user, every partition emits one extra row (``user_id``
null) that carries its quarantined rows (invalid rows and duplicate pairs) in
``reject_reasons`` / ``reject_records``, and the number and sum of ratings per movie in
``part_movie_*`` (for the movie table, without another pass over 25M ratings).

A partition is held in memory by its Python worker: size ``preprocess.history_files`` so
that a partition stays well under the worker's memory (25M ratings / 8 = ~60 MB).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys.config import SplitConfig
from recsys.features.arrow_util import partition_table, split_tagged
from recsys.features.splits import ROLES, assign_splits

HISTORY_COLUMNS = ("user_id", "movie_ids", "ratings", "timestamps", "num_ratings", "mean_rating")
SPLIT_COLUMNS = ("user_id", "role", "holdout_movie_ids", "last_movie_id", "last_timestamp")

_SCHEMA = pa.schema([
    ("user_id", pa.int32()),
    ("movie_ids", pa.list_(pa.int32())),
    ("ratings", pa.list_(pa.float32())),
    ("timestamps", pa.list_(pa.int64())),
    ("num_ratings", pa.int32()),
    ("mean_rating", pa.float32()),
    ("role", pa.string()),
    ("holdout_movie_ids", pa.list_(pa.int32())),
    ("last_movie_id", pa.int32()),
    ("last_timestamp", pa.int64()),
    ("reject_reasons", pa.list_(pa.string())),
    ("reject_records", pa.list_(pa.string())),
    ("part_movie_ids", pa.list_(pa.int32())),
    ("part_movie_counts", pa.list_(pa.int64())),
    ("part_movie_sums", pa.list_(pa.float64())),
])
SPARK_SCHEMA = (
    "user_id int, movie_ids array<int>, ratings array<float>, timestamps array<bigint>, "
    "num_ratings int, mean_rating float, role string, holdout_movie_ids array<int>, "
    "last_movie_id int, last_timestamp bigint, reject_reasons array<string>, "
    "reject_records array<string>, part_movie_ids array<int>, part_movie_counts array<bigint>, "
    "part_movie_sums array<double>"
)
_OUT_USERS = 20_000  # users per output record batch


def _lists(offsets: np.ndarray, values, typ: pa.DataType) -> pa.ListArray:  # noqa: ANN001
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, typ))


def _dedup(users, movies, ratings, timestamps):  # noqa: ANN001, ANN202
    """Keep mask: of several ratings of one (user, movie), the latest (equal times: the
    higher rating) is kept."""
    n = users.size
    pair = (users.astype(np.int64) << 32) | movies.astype(np.int64)
    order = np.argsort(pair)
    sorted_pair = pair[order]
    same = sorted_pair[1:] == sorted_pair[:-1]
    keep = np.ones(n, dtype=bool)
    if same.any():  # rare: order only the rows of duplicated pairs by (time, rating)
        in_dup = np.zeros(n, dtype=bool)
        in_dup[1:] |= same
        in_dup[:-1] |= same
        idx = order[in_dup]
        idx = idx[np.lexsort((ratings[idx], timestamps[idx], pair[idx]))]
        last = np.r_[pair[idx][1:] != pair[idx][:-1], True]
        keep[idx[~last]] = False
    return keep


def user_tables(
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray,
    split: SplitConfig,
) -> tuple[dict[str, object], np.ndarray]:
    """Histories and splits of valid rows; returns (columns, keep mask of the input)."""
    keep = _dedup(users, movies, ratings, timestamps)
    u, m, r, t = users[keep], movies[keep], ratings[keep], timestamps[keep]
    if u.size:
        # (user, time) as one int64 key after sorting by movie: equal times stay by movie
        by_movie = np.argsort(m, kind="stable")
        u, m, r, t = u[by_movie], m[by_movie], r[by_movie], t[by_movie]
        t0 = int(t.min())
        if int(t.max()) - t0 < (1 << 31):
            order = np.argsort((u.astype(np.int64) << 32) | (t - t0), kind="stable")
        else:
            order = np.lexsort((t, u))
        u, m, r, t = u[order], m[order], r[order], t[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if u.size else np.empty(0, np.int64)
    offsets = np.r_[starts, u.size].astype(np.int64)
    counts = np.diff(offsets)
    user_ids = u[starts]
    means = np.add.reduceat(r.astype(np.float64), starts) / counts if u.size else np.empty(0)
    role, h_offsets, h_movies = assign_splits(user_ids, offsets, m, r, split)
    last = offsets[1:] - 1
    columns = {
        "user_id": pa.array(user_ids, pa.int32()),
        "movie_ids": _lists(offsets, m, pa.int32()),
        "ratings": _lists(offsets, r, pa.float32()),
        "timestamps": _lists(offsets, t, pa.int64()),
        "num_ratings": pa.array(counts, pa.int32()),
        "mean_rating": pa.array(means, pa.float32()),
        "role": pa.array(np.asarray(ROLES, dtype=object)[role], pa.string()),
        "holdout_movie_ids": _lists(h_offsets, h_movies, pa.int32()),
        "last_movie_id": pa.array(m[last], pa.int32()),
        "last_timestamp": pa.array(t[last], pa.int64()),
    }
    return columns, keep


def _partition_row(reasons: list[str], records: list[str], movies: np.ndarray,
                   ratings: np.ndarray) -> pa.Table:
    """The partition's extra row: its rejects and per-movie rating counts and sums."""
    row = {name: pa.nulls(1, _SCHEMA.field(name).type) for name in _SCHEMA.names}
    row["reject_reasons"] = pa.array([reasons], pa.list_(pa.string()))
    row["reject_records"] = pa.array([records], pa.list_(pa.string()))
    ids, inverse = np.unique(movies, return_inverse=True)
    row["part_movie_ids"] = pa.array([ids], pa.list_(pa.int32()))
    row["part_movie_counts"] = pa.array([np.bincount(inverse)], pa.list_(pa.int64()))
    row["part_movie_sums"] = pa.array(
        [np.bincount(inverse, weights=ratings.astype(np.float64))], pa.list_(pa.float64())
    )
    return pa.table(row, schema=_SCHEMA)


def _partition(split: SplitConfig, sep: str):  # noqa: ANN202
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = partition_table(batches)
        if table is None:
            return
        good, bad = split_tagged(table)
        col = lambda name: good.column(name).to_numpy()  # noqa: E731
        columns, keep = user_tables(col("user_id"), col("movie_id"), col("rating"), col("timestamp"), split)
        n = len(columns["user_id"])
        for name in ("reject_reasons", "reject_records", "part_movie_ids",
                     "part_movie_counts", "part_movie_sums"):
            columns[name] = pa.nulls(n, _SCHEMA.field(name).type)
        yield from pa.table(columns, schema=_SCHEMA).to_batches(max_chunksize=_OUT_USERS)

        def rebuilt(rows: dict[str, list], i: int) -> str:  # record text from parsed values
            u, m, r, t = (rows[c][i] for c in ("user_id", "movie_id", "rating", "timestamp"))
            return sep.join((str(u), str(m), repr(float(r)), str(t)))

        reasons = bad["reason"]
        records = [rec if rec is not None else rebuilt(bad, i) for i, rec in enumerate(bad["record"])]
        if not keep.all():
            dup = good.filter(pa.array(~keep)).to_pydict()
            reasons += ["duplicate_pair"] * len(dup["user_id"])
            records += [rebuilt(dup, i) for i in range(len(dup["user_id"]))]
        kept = good.filter(pa.array(keep))
        yield from _partition_row(
            reasons, records, kept.column("movie_id").to_numpy(), kept.column("rating").to_numpy()
        ).to_batches()

    return run


def build_user_tables(tagged: DataFrame, partitions: int, split: SplitConfig, sep: str = ",") -> DataFrame:
    """One row per user (histories + splits) and one reject row per partition.

    ``tagged``: ``user_id, movie_id, rating, timestamp, reason, record`` (reason null for
    a valid row), as made by :func:`recsys.data.validation.tag_rows`.
    """
    shuffled = tagged.select(
        "user_id", "movie_id", "rating", "timestamp", "reason", "record"
    ).repartition(partitions, "user_id")
    return shuffled.mapInArrow(_partition(split, sep), SPARK_SCHEMA)


def histories_of(built: DataFrame) -> DataFrame:
    return built.where(F.col("user_id").isNotNull()).select(*HISTORY_COLUMNS)


def splits_of(built: DataFrame) -> DataFrame:
    return built.where(F.col("user_id").isNotNull()).select(*SPLIT_COLUMNS)


def movie_sums_of(built: DataFrame) -> DataFrame:
    """``movie_id``, ``n``, ``total``: valid ratings per movie, summed over partitions."""
    parts = built.where(F.col("user_id").isNull()).select(F.explode(F.arrays_zip(
        F.col("part_movie_ids").alias("movie_id"),
        F.col("part_movie_counts").alias("n"),
        F.col("part_movie_sums").alias("total"),
    )).alias("x"))
    return parts.groupBy(F.col("x.movie_id").alias("movie_id")).agg(
        F.sum("x.n").alias("n"), F.sum("x.total").alias("total")
    )
