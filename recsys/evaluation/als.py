"""Spark MLlib ALS as a baseline (DESIGN §6-7): fitted on the same ratings as the model,
recommending with ``recommendForAllUsers`` — the reference for both quality and speed."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys import io


@dataclass(frozen=True)
class AlsSettings:
    rank: int = 64
    reg_param: float = 0.1
    max_iter: int = 10
    implicit: bool = False
    alpha: float = 1.0
    seed: int = 7
    #: User and item blocks; 0 = Spark's default (10). Small corpora fit ~2x faster in 2.
    blocks: int = 0


def ratings_from_histories(spark: SparkSession, histories_uri: str) -> DataFrame:
    """``user_id, movie_id, rating`` rows from the per-user histories (one per rating)."""
    histories = spark.read.parquet(histories_uri)
    pairs = F.explode(F.arrays_zip(F.col("movie_ids").alias("movie_id"),
                                   F.col("ratings").alias("rating")))
    return (histories.select("user_id", pairs.alias("p"))
            .select("user_id", F.col("p.movie_id").alias("movie_id"),
                    F.col("p.rating").cast("float").alias("rating")))


def fit_als(ratings: DataFrame, settings: AlsSettings = AlsSettings()):
    """An ``ALSModel`` on ``user_id, movie_id, rating`` (explicit, or implicit confidences)."""
    from pyspark.ml.recommendation import ALS

    als = ALS(rank=settings.rank, regParam=settings.reg_param, maxIter=settings.max_iter,
              implicitPrefs=settings.implicit, alpha=settings.alpha, seed=settings.seed,
              userCol="user_id", itemCol="movie_id", ratingCol="rating",
              coldStartStrategy="drop", nonnegative=False,
              **({"numUserBlocks": settings.blocks, "numItemBlocks": settings.blocks}
                 if settings.blocks > 0 else {}))
    return als.fit(ratings)


def histories_uri(root: str, preprocess_run: str | None = None) -> str:
    from recsys import artifacts

    return io.join(artifacts.resolve(root, "preprocess", preprocess_run), "histories")
