"""Stage 4-5 (DESIGN §4.4-4.5): score every user in a pandas UDF and publish the tables.

Inputs: the latest (or named) preprocess run's histories — tonight's data — and a train
run with the index built from it. Both are verified against their manifests (sizes and
MD5s) and the index must name the train run as its model version; anything else is
refused before a single user is scored.

The distributed step is ``mapInPandas`` over the histories: each Python worker loads the
user tower and both searchers once (:func:`recsys.scoring.recommend.load_scoring_artifacts`,
from the artifact URIs), then scores batches of ``score.batch_size`` users. Nothing but
the movie side (similar movies, a few MB) is computed on the driver.

Published (each a ``run_date`` partition, see :mod:`recsys.publish.tables`):

* recommendations: ``user_id:int, recommendations:array<struct<movie_id:int,
  score:float>>, model_version:string, run_id:string``
* user embeddings: ``user_id:int, embedding:array<float>, model_version, run_id``
* similar movies: ``movie_id:int, similar:array<struct<movie_id:int, score:float>>,
  model_version, run_id``
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys import artifacts, io
from recsys.config import Config
from recsys.publish.tables import publish_partition, register_table

log = logging.getLogger(__name__)
STAGE = "score"
UDF_SCHEMA = ("user_id int, movie_ids array<int>, scores array<float>, "
              "embedding array<float>")
RECOMMENDATIONS_SCHEMA = ("user_id INT, recommendations ARRAY<STRUCT<movie_id: INT, "
                          "score: FLOAT>>, model_version STRING, run_id STRING")


@dataclass
class ScoreResult:
    run_dir: str
    manifest: artifacts.Manifest
    tables: dict[str, str]


def check_artifacts(root: str, *, train_run: str | None, index_run: str | None
                    ) -> tuple[str, str, str]:
    """Verified (train_dir, index_dir, model_version); refuses mismatched or corrupt runs."""
    train_dir = artifacts.resolve(root, "train", train_run)
    index_dir = artifacts.resolve(root, "index", index_run)
    train_manifest = artifacts.verify(train_dir)
    index_manifest = artifacts.verify(index_dir)
    model_version = train_manifest["run_id"]
    built_for = index_manifest["inputs"]["model_version"]
    if built_for != model_version:
        raise artifacts.ArtifactError(
            f"index run {index_manifest['run_id']} was built for model {built_for}, but the "
            f"model to score with is {model_version}: rebuild the index (jobs/build_index.py)")
    return train_dir, index_dir, model_version


def _score_batches(train_dir: str, index_dir: str, top_n: int, max_scann_depth: int):
    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import recsys  # noqa: F401  (TensorFlow environment on the worker)
        from recsys.scoring.recommend import load_scoring_artifacts, recommend

        tower, scann, exact = load_scoring_artifacts(train_dir, index_dir)
        for batch in batches:
            if batch.empty:
                continue
            movies = [np.asarray(m, np.int64) for m in batch["movie_ids"]]
            lengths = np.fromiter((m.size for m in movies), np.int64, len(movies))
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            recs = recommend(
                tower, scann, exact,
                user_ids=batch["user_id"].to_numpy(np.int64), offsets=offsets,
                movie_ids=np.concatenate(movies),
                ratings=np.concatenate([np.asarray(r, np.float32) for r in batch["ratings"]]),
                n=top_n, max_scann_depth=max_scann_depth)
            yield pd.DataFrame({
                "user_id": batch["user_id"].to_numpy(np.int32),
                "movie_ids": list(recs.movie_ids.astype(np.int32)),
                "scores": list(recs.scores),
                "embedding": list(recs.embeddings.astype(np.float32)),
            })

    return score


def _pairs(ids: str, scores: str) -> Any:
    return F.transform(F.arrays_zip(F.col(ids).alias("i"), F.col(scores).alias("s")),
                       lambda x: F.struct(x["i"].alias("movie_id"), x["s"].alias("score")))


def similar_movies(spark: SparkSession, index_dir: str, train_dir: str, k: int) -> DataFrame:
    """Top-``k`` neighbours of every movie (itself excluded), computed on the driver."""
    from recsys.index.build import read_movie_embeddings
    from recsys.index.searcher import MovieSearcher

    emb, ids = read_movie_embeddings(train_dir)
    exact = MovieSearcher.load(io.local_copy(io.join(index_dir, "exact"),
                                             tempfile.mkdtemp(prefix="recsys-similar-")))
    k = min(k, max(ids.size - 1, 0))
    found, scores = exact.search(emb, k + 1)
    keep = found != ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(found, order, axis=1).astype(np.int32)
    scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    pdf = pd.DataFrame({"movie_id": ids.astype(np.int32), "movie_ids": list(found),
                        "scores": list(scores)})
    df = spark.createDataFrame(pdf, "movie_id int, movie_ids array<int>, scores array<float>")
    return df.select("movie_id", _pairs("movie_ids", "scores").alias("similar"))


def run_score(spark: SparkSession, config: Config, *, run_id: str | None = None,
              run_date: str | None = None, preprocess_run: str | None = None,
              train_run: str | None = None, index_run: str | None = None) -> ScoreResult:
    """Score every user of the preprocess run's histories and publish the three tables."""
    root = config.artifact_root
    cfg = config.score
    run_id = run_id or artifacts.new_run_id()
    run_date = run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    run_dir = artifacts.stage_dir(root, STAGE, run_id)
    manifest = artifacts.Manifest(STAGE, run_id, config)
    try:
        with manifest.timed("check_artifacts"):
            train_dir, index_dir, model_version = check_artifacts(
                root, train_run=train_run, index_run=index_run)
            preprocess_dir = artifacts.resolve(root, "preprocess", preprocess_run)
        manifest["inputs"] = {"preprocess_dir": preprocess_dir, "train_dir": train_dir,
                              "index_dir": index_dir, "model_version": model_version,
                              "run_date": run_date}
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.batch_size))
        histories = spark.read.parquet(io.join(preprocess_dir, "histories")).select(
            "user_id", "movie_ids", "ratings")
        scored = histories.mapInPandas(
            _score_batches(train_dir, index_dir, cfg.top_n, cfg.max_scann_depth), UDF_SCHEMA)
        scored = scored.persist()
        stamp = [F.lit(model_version).alias("model_version"), F.lit(run_id).alias("run_id")]
        recommendations = scored.select(
            "user_id", _pairs("movie_ids", "scores").alias("recommendations"), *stamp)
        embeddings = scored.select("user_id", "embedding", *stamp)
        table_root = cfg.table_root or io.join(root, "tables")
        tables: dict[str, str] = {}
        published = {"run_id": run_id, "run_date": run_date, "model_version": model_version}
        with manifest.timed("score_and_publish_recommendations"):
            uri = io.join(table_root, cfg.recommendations_table)
            publish_partition(spark, recommendations, table_uri=uri, run_date=run_date,
                              run_id=run_id, manifest=published)
            tables["recommendations"] = register_table(
                spark, database=cfg.database, name=cfg.recommendations_table, table_uri=uri)
        with manifest.timed("publish_user_embeddings"):
            uri = io.join(table_root, cfg.user_embeddings_table)
            publish_partition(spark, embeddings, table_uri=uri, run_date=run_date,
                              run_id=run_id, manifest=published)
            tables["user_embeddings"] = register_table(
                spark, database=cfg.database, name=cfg.user_embeddings_table, table_uri=uri)
        with manifest.timed("publish_similar_movies"):
            uri = io.join(table_root, cfg.similar_movies_table)
            similar = similar_movies(spark, index_dir, train_dir, cfg.similar_movies)
            publish_partition(spark, similar.select("*", *stamp), table_uri=uri,
                              run_date=run_date, run_id=run_id, manifest=published, files=1)
            tables["similar_movies"] = register_table(
                spark, database=cfg.database, name=cfg.similar_movies_table, table_uri=uri)
        with manifest.timed("count"):
            manifest["counts"] = {"users": scored.count(), "top_n": cfg.top_n}
        scored.unpersist()
        manifest["tables"] = {k: {"name": v, "partition": f"run_date={run_date}"}
                              for k, v in tables.items()}
        manifest["table_root"] = table_root
        artifacts.commit(root, STAGE, run_dir, manifest, config)
    except BaseException as exc:
        artifacts.write_failed(run_dir, manifest, exc)
        raise
    return ScoreResult(run_dir, manifest, tables)
