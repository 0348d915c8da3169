"""Stage 4-5 (DESIGN §4.4-4.5): score every user in an Arrow UDF and publish the tables.

Inputs: the latest (or named) preprocess run's histories — tonight's data — and a train
run with the index built from it. Both are verified against their manifests (sizes and
MD5s) and the index must name the train run as its model version; anything else is
refused before a single user is scored.

The distributed step is ``mapInArrow`` over the histories (Arrow batches straight into
numpy and back, the nested result built on the worker): each Python worker loads the
user tower and both searchers once (:func:`recsys.scoring.recommend.load_scoring_artifacts`,
from the artifact URIs), then scores batches of ``score.batch_size`` users. Nothing but
the movie side is ever on the driver, and similar movies come ready-made from the index
run (:mod:`recsys.index.similar`).

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
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys import artifacts, io
from recsys.config import Config
from recsys.csr import fixed_lists, list_column, ranked_movies
from recsys.index.similar import SIMILAR
from recsys.publish.tables import publish_partition, register_table, warm_catalog

log = logging.getLogger(__name__)
STAGE = "score"
_PAIR = T.StructType([T.StructField("movie_id", T.IntegerType()),
                      T.StructField("score", T.FloatType())])
#: What the UDF returns; recommendations and embeddings never hold null elements.
UDF_SCHEMA = T.StructType([
    T.StructField("user_id", T.IntegerType()),
    T.StructField("recommendations", T.ArrayType(_PAIR, containsNull=False)),
    T.StructField("embedding", T.ArrayType(T.FloatType(), containsNull=False)),
])
EMBEDDING = pa.list_(pa.field("element", pa.float32(), nullable=False))


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
    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import recsys  # noqa: F401  (the worker's environment, set before any TensorFlow)
        from recsys.scoring.recommend import load_scoring_artifacts, recommend

        tower, scann, exact = load_scoring_artifacts(train_dir, index_dir)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            offsets, movie_ids = list_column(batch.column("movie_ids"))
            _, ratings = list_column(batch.column("ratings"))
            recs = recommend(
                tower, scann, exact,
                user_ids=batch.column("user_id").to_numpy().astype(np.int64), offsets=offsets,
                movie_ids=movie_ids.astype(np.int64, copy=False),
                ratings=ratings.astype(np.float32, copy=False), n=top_n,
                max_scann_depth=max_scann_depth)
            emb = recs.embeddings.astype(np.float32)
            yield pa.RecordBatch.from_arrays([
                batch.column("user_id").cast(pa.int32()),
                ranked_movies(recs.movie_ids, recs.scores),
                fixed_lists(pa.array(emb.reshape(-1)), emb.shape[0], emb.shape[1], EMBEDDING),
            ], names=["user_id", "recommendations", "embedding"])

    return score


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
    with artifacts.failure_recorded(run_dir, manifest):
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
        scored = histories.mapInArrow(
            _score_batches(train_dir, index_dir, cfg.top_n, cfg.max_scann_depth), UDF_SCHEMA)
        scored = scored.persist()
        stamp = [F.lit(model_version).alias("model_version"), F.lit(run_id).alias("run_id")]
        recommendations = scored.select("user_id", "recommendations", *stamp)
        embeddings = scored.select("user_id", "embedding", *stamp)
        table_root = cfg.table_root or io.join(root, "tables")
        tables: dict[str, str] = {}
        published = {"run_id": run_id, "run_date": run_date, "model_version": model_version}
        catalog = warm_catalog(spark, cfg.database)  # connects while the workers score

        def publish(key: str, name: str, df: DataFrame, files: int | None = None) -> None:
            uri = io.join(table_root, name)
            publish_partition(spark, df, table_uri=uri, run_date=run_date, run_id=run_id,
                              manifest=published, files=files)
            catalog.join()
            tables[key] = register_table(spark, database=cfg.database, name=name,
                                         table_uri=uri)

        with manifest.timed("score_and_publish_recommendations"):
            publish("recommendations", cfg.recommendations_table, recommendations)
        with manifest.timed("publish_user_embeddings"):
            publish("user_embeddings", cfg.user_embeddings_table, embeddings)
        with manifest.timed("publish_similar_movies"):
            similar = spark.read.parquet(io.join(index_dir, SIMILAR)).select("*", *stamp)
            publish("similar_movies", cfg.similar_movies_table, similar, files=1)
        with manifest.timed("count"):
            manifest["counts"] = {"users": scored.count(), "top_n": cfg.top_n}
        scored.unpersist()
        manifest["tables"] = {k: {"name": v, "partition": f"run_date={run_date}"}
                              for k, v in tables.items()}
        manifest["table_root"] = table_root
        artifacts.commit(root, STAGE, run_dir, manifest, config)
    return ScoreResult(run_dir, manifest, tables)
