"""Spark MLlib ALS as a baseline (DESIGN §6-7): fitted on the same ratings as the model,
recommending with ``recommendForAllUsers`` — the reference for both quality and speed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def fold_in(item_factors: np.ndarray, offsets: np.ndarray, items: np.ndarray,
            ratings: np.ndarray, settings: AlsSettings) -> np.ndarray:
    """Factors ``[users, rank]`` of users ALS never saw, from their ratings (CSR:
    ``items[offsets[u]:offsets[u+1]]`` are rows of ``item_factors``), the item factors
    held fixed: the normal equations Spark's ALS solves for each user in its last
    half-iteration, so a user it did fit gets back (to float precision) the factors it
    learned.

    * explicit: ``(Σ y yᵀ + λ n I) x = Σ r y`` over the user's n ratings;
    * implicit (Hu et al. 2008, Spark's form): with ``c = α|r|``,
      ``(YᵀY + Σ c y yᵀ + λ n I) x = Σ_{r>0} (1 + c) y``, n = number of ratings > 0.

    λ is ``settings.reg_param``, scaled by n as in ALS-WR (Spark does the same).
    """
    y = np.asarray(item_factors, np.float64)
    users = offsets.size - 1
    out = np.zeros((users, y.shape[1]), np.float32)
    gram = y.T @ y if settings.implicit else None
    for u in range(users):
        lo, hi = offsets[u], offsets[u + 1]
        yu = y[items[lo:hi]]
        r = np.asarray(ratings[lo:hi], np.float64)
        if settings.implicit:
            c = settings.alpha * np.abs(r)
            a = gram + (yu * c[:, None]).T @ yu
            b = np.where(r > 0, 1.0 + c, 0.0) @ yu
            n = int(np.count_nonzero(r > 0))
        else:
            a = yu.T @ yu
            b = r @ yu
            n = r.size
        if n == 0:
            continue  # nothing to fold in: the zero vector (scores 0 everywhere)
        a[np.diag_indices_from(a)] += settings.reg_param * n
        out[u] = np.linalg.solve(a, b)
    return out


def histories_uri(root: str, preprocess_run: str | None = None) -> str:
    from recsys import artifacts

    return io.join(artifacts.resolve(root, "preprocess", preprocess_run), "histories")
