"""The movie table: content features for every movie of the release, rated or not."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys.features.arrow_util import partition_table, split_tagged


def rating_stats(sums: DataFrame) -> DataFrame:
    """``movie_id``, ``num_ratings``, ``mean_rating`` from per-movie ``n`` and ``total``
    (a movie may have several rows: they are summed)."""
    agg = sums.groupBy("movie_id").agg(F.sum("n").alias("n"), F.sum("total").alias("total"))
    return agg.select(
        "movie_id",
        F.col("n").cast("int").alias("num_ratings"),
        F.when(F.col("n") > 0, F.col("total") / F.col("n")).cast("float").alias("mean_rating"),
    )


def top_tags(tags: DataFrame, max_tags: int) -> DataFrame:
    """``movie_id``, ``tags``: the most applied tags (lower-cased), most frequent first."""
    counted = tags.select("movie_id", F.lower(F.trim("tag")).alias("tag")).groupBy(
        "movie_id", "tag"
    ).count()
    w = Window.partitionBy("movie_id").orderBy(F.col("count").desc(), F.col("tag"))
    ranked = counted.withColumn("_rank", F.row_number().over(w)).where(F.col("_rank") <= max_tags)
    return ranked.groupBy("movie_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("_rank", "tag"))), lambda s: s["tag"])
        .alias("tags")
    )


_GENOME_SCHEMA = (
    "movie_id int, genome array<float>, num_rows int, "
    "reject_reasons array<string>, reject_records array<string>"
)


def _genome_partition(num_tags: int):  # noqa: ANN202
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = partition_table(batches)
        if table is None:
            return
        good, bad = split_tagged(table)
        movie = good.column("movie_id").to_numpy()
        tag = good.column("tag_id").to_numpy()
        rel = good.column("relevance").to_numpy()
        order = np.argsort((movie.astype(np.int64) << 32) | tag.astype(np.int64))
        movie, rel = movie[order], rel[order]
        starts = np.flatnonzero(np.r_[True, movie[1:] != movie[:-1]]) if movie.size else np.empty(0, np.int64)
        counts = np.diff(np.r_[starts, movie.size])
        full = counts == num_tags
        values = rel[np.repeat(full, counts)]
        offsets = np.zeros(starts.size + 1, dtype=np.int32)
        offsets[1:] = np.cumsum(np.where(full, num_tags, 0))
        genome = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(values, pa.float32()), mask=pa.array(~full)
        )
        n = starts.size
        empty = pa.array([[]] * n, pa.list_(pa.string()))
        yield pa.RecordBatch.from_arrays(
            [pa.array(movie[starts], pa.int32()), genome, pa.array(counts, pa.int32()), empty, empty],
            names=["movie_id", "genome", "num_rows", "reject_reasons", "reject_records"],
        )
        if bad["reason"]:
            records = [  # rows rejected after parsing (unknown movie) keep no raw text
                rec if rec is not None else f"{m},{t},{float(r)!r}"
                for rec, m, t, r in zip(bad["record"], bad["movie_id"], bad["tag_id"], bad["relevance"])
            ]
            yield pa.RecordBatch.from_pydict({
                "movie_id": pa.nulls(1, pa.int32()),
                "genome": pa.nulls(1, pa.list_(pa.float32())),
                "num_rows": pa.nulls(1, pa.int32()),
                "reject_reasons": pa.array([bad["reason"]], pa.list_(pa.string())),
                "reject_records": pa.array([records], pa.list_(pa.string())),
            })

    return run


def genome_vectors(tagged_scores: DataFrame, num_tags: int, partitions: int) -> DataFrame:
    """One pass over genome-scores: ``movie_id``, ``genome`` (relevance per genome tag,
    ordered by tag id; null unless the movie is scored on all ``num_tags`` tags),
    ``num_rows``, plus one row per partition (``movie_id`` null) carrying its rejects in
    ``reject_reasons`` / ``reject_records``. Grouped with numpy (15.6M rows for ml-25m).

    ``tagged_scores``: ``movie_id, tag_id, relevance, reason, record``.
    """
    return (
        tagged_scores.select("movie_id", "tag_id", "relevance", "reason", "record")
        .repartition(partitions, "movie_id")
        .mapInArrow(_genome_partition(num_tags), _GENOME_SCHEMA)
    )


def build_movie_table(
    movies: DataFrame,
    stats: DataFrame,
    *,
    tags: DataFrame | None = None,
    genome: DataFrame | None = None,
    links: DataFrame | None = None,
) -> DataFrame:
    """``movie_id``, ``title``, ``year``, ``genres``, ``num_ratings``, ``mean_rating``,
    ``tags``, ``genome``, ``imdb_id``, ``tmdb_id`` (the optional ones null when absent)."""
    table = movies.select("movie_id", "title", "year", "genres").join(stats, "movie_id", "left")
    table = table.withColumn("num_ratings", F.coalesce("num_ratings", F.lit(0)))
    if tags is not None:
        table = table.join(tags, "movie_id", "left")
    else:
        table = table.withColumn("tags", F.lit(None).cast("array<string>"))
    table = table.withColumn("tags", F.coalesce("tags", F.array().cast("array<string>")))
    if genome is not None:
        table = table.join(genome.select("movie_id", "genome"), "movie_id", "left")
    else:
        table = table.withColumn("genome", F.lit(None).cast("array<float>"))
    if links is not None:
        table = table.join(links.select("movie_id", "imdb_id", "tmdb_id"), "movie_id", "left")
    else:
        table = table.withColumn("imdb_id", F.lit(None).cast("string")).withColumn(
            "tmdb_id", F.lit(None).cast("int")
        )
    return table.orderBy("movie_id")


def movie_vocabulary(movie_table: DataFrame) -> DataFrame:
    """``movie_id``, ``index``, ``num_ratings``: most rated first (index 0), ties by id."""
    w = Window.orderBy(F.col("num_ratings").desc(), F.col("movie_id"))
    return movie_table.select(
        "movie_id", (F.row_number().over(w) - 1).cast("int").alias("index"), "num_ratings"
    )


def user_vocabulary(histories: DataFrame) -> DataFrame:
    """``user_id``, ``index``, ``num_ratings``, by ascending user id."""
    w = Window.orderBy("user_id")
    return histories.select(
        "user_id", (F.row_number().over(w) - 1).cast("int").alias("index"), "num_ratings"
    )


def genre_vocabulary(movie_table: DataFrame) -> DataFrame:
    """``genre``, ``index``, ``num_movies``, alphabetical."""
    counts = movie_table.select(F.explode("genres").alias("genre")).groupBy("genre").agg(
        F.count(F.lit(1)).cast("int").alias("num_movies")
    )
    w = Window.orderBy("genre")
    return counts.select("genre", (F.row_number().over(w) - 1).cast("int").alias("index"), "num_movies")
