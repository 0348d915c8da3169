"""Stage 4-5 (DESIGN §4.4-4.5): score every user in an Arrow UDF and publish the tables.

Inputs: the latest (or named) preprocess run's histories — tonight's data — and a train
run with the index built from it. Both are verified against their manifests (sizes and
MD5s), the index must name the train run as its model version, and an ``mf`` model must
have an embedding for every user of the histories (their ids are read on the driver for
that check, for ``mf`` models only: :func:`check_users`); anything else is refused
before a single user is scored.

The distributed step is ``mapInArrow`` over the histories (Arrow batches straight into
numpy; of the ratings only the last ``history_length`` the user tower reads,
:func:`read_histories`): each Python worker loads the user tower and both searchers once
(:func:`recsys.scoring.recommend.load_scoring_artifacts`, from the artifact URIs), scores
batches of ``score.batch_size`` users, and writes the rows of the recommendations and
user-embeddings tables into its own Parquet part files in the staged partitions
(:mod:`recsys.publish.parts`). The driver collects only the names and row counts of
those files, keeps the ones of the tasks that succeeded and publishes. Nothing but the
movie side is ever on the driver, and similar movies come ready-made from the index run
(:mod:`recsys.index.similar`).

Published (each a ``run_date`` partition, see :mod:`recsys.publish.tables`):

* recommendations: ``user_id:int, recommendations:array<struct<movie_id:int,
  score:float>>, model_version:string, run_id:string``
* user embeddings: ``user_id:int, embedding:array<float>, model_version, run_id``
* similar movies: ``movie_id:int, similar:array<struct<movie_id:int, score:float>>,
  model_version, run_id``
"""

from __future__ import annotations

import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from recsys import artifacts, io
from recsys.config import Config, ConfigError
from recsys.csr import MOVIE_SCORES, fixed_lists, list_column, ranges, ranked_movies
from recsys.index import similar
from recsys.publish.claim import claim_night
from recsys.publish.parts import PartWriter, keep_only, part_name, task_identity
from recsys.publish.tables import (
    add_night, check_metastore_dir, commit_partition, expire_nights, prepare_table,
    stage_partition)
from recsys.spark import local_dirs

log = logging.getLogger(__name__)
STAGE = "score"
EMBEDDING = pa.list_(pa.field("element", pa.float32(), nullable=False))
_STAMP = [pa.field("model_version", pa.string()), pa.field("run_id", pa.string())]
#: The published tables' schemas (DESIGN §4.4), as the workers write them; Spark reads
#: ``user_id int, recommendations array<struct<movie_id:int, score:float>>, ...``.
RECOMMENDATIONS = pa.schema([pa.field("user_id", pa.int32()),
                             pa.field("recommendations", MOVIE_SCORES), *_STAMP])
USER_EMBEDDINGS = pa.schema([pa.field("user_id", pa.int32()),
                             pa.field("embedding", EMBEDDING), *_STAMP])
SIMILAR_MOVIES = pa.schema([*similar.SCHEMA, *_STAMP])
#: The histories columns scoring reads (recsys.features.histories writes them).
SCORING_INPUT = pa.schema([pa.field("user_id", pa.int32()),
                           pa.field("movie_ids", pa.list_(pa.int32())),
                           pa.field("ratings", pa.list_(pa.float32()))])
#: What each scoring task returns to the driver: one row per part file it wrote.
WRITTEN = T.StructType([T.StructField("table", T.StringType()),
                        T.StructField("file", T.StringType()),
                        T.StructField("rows", T.LongType())])


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


def check_users(train_dir: str, preprocess_dir: str, model_version: str) -> None:
    """Refuses a model that cannot embed every user of the preprocess run: an ``mf`` model
    (user-id embeddings) trained on another run, with users it never saw. Each of them
    would get the same untrained embedding, and a top-N that looks like the others and is
    noise."""
    from recsys.model.serving import users_without_embedding

    unknown = users_without_embedding(train_dir, io.join(preprocess_dir, "histories"))
    if unknown.size:
        shown = ", ".join(str(u) for u in unknown[:5]) + (", ..." if unknown.size > 5 else "")
        raise artifacts.ArtifactError(
            f"model {model_version} (mf: one embedding per user id) has none for "
            f"{unknown.size} users of {preprocess_dir} ({shown}): it can score only the "
            "users it was trained with. Train a model on this preprocess run first "
            "(jobs/train.py; the nightly retrains when it sees new users), or use "
            "model.kind = \"history\", which embeds any user from their history")


def read_histories(spark: SparkSession, uri: str, *, rating_window: int | None = None):
    """The histories' scoring columns as a DataFrame, with :data:`SCORING_INPUT` given to
    Spark rather than inferred (inference is a Spark job of its own over every file's
    footer: 0.5-0.6 s of the job on the full-scale corpus). One file's footer is checked
    here, so a histories table of another layout is refused with its columns named.

    ``rating_window``: only each user's last ``rating_window`` ratings are kept (the user
    tower reads no more than its ``history_length``; ``0`` for a model that reads none),
    while ``movie_ids`` stays whole for removing rated movies. On the full-scale corpus
    that is 6 of 25 million ratings handed from the JVM to the Python workers."""
    parts = io.parquet_parts(uri)
    found = io.parquet_schema(parts[0])
    for want in SCORING_INPUT:
        have = found.field(want.name).type if want.name in found.names else None
        same = have is not None and (
            pa.types.is_list(have) and have.value_type == want.type.value_type
            if pa.types.is_list(want.type) else have == want.type)
        if not same:
            raise artifacts.ArtifactError(
                f"{parts[0]} does not hold the histories layout scoring reads: column "
                f"{want.name!r} is {have or 'missing'}, expected {want.type}")
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    histories = spark.read.schema(from_arrow_schema(SCORING_INPUT)).parquet(uri)
    if rating_window is None:
        return histories
    if rating_window < 0:
        raise ValueError(f"rating_window must be >= 0, got {rating_window}")
    start = F.greatest(F.size("ratings") - F.lit(rating_window - 1), F.lit(1))
    return histories.select("user_id", "movie_ids",
                            F.slice("ratings", start, F.lit(rating_window)).alias("ratings"))


def rating_window(train_dir: str) -> int:
    """How many of a user's last ratings the train run's user tower reads."""
    from recsys.model.serving import model_info

    info = model_info(train_dir)
    return int(info["history_length"]) if info.get("kind") == "history" else 0


def ratings_at_ends(offsets: np.ndarray, tail_offsets: np.ndarray,
                    tail: np.ndarray) -> np.ndarray:
    """Each row's last ratings (CSR ``tail_offsets``/``tail``, as :func:`read_histories`
    keeps them) placed at the end of that row of a CSR with ``offsets`` (its movie ids),
    zeros before: what the user tower reads is where it reads it."""
    lengths = np.diff(tail_offsets)
    room = np.diff(offsets)
    if np.any(lengths > room):
        row = int(np.flatnonzero(lengths > room)[0])
        raise ValueError(f"row {row} has {lengths[row]} ratings for {room[row]} movies")
    out = np.zeros(int(offsets[-1]), np.float32)
    out[ranges(offsets[1:] - lengths, lengths)] = tail
    return out


def _stamp(rows: int, model_version: str, run_id: str) -> list[pa.Array]:
    """The ``model_version`` and ``run_id`` columns (``_STAMP``) of a night's table."""
    return [pa.array([model_version] * rows, pa.string()),
            pa.array([run_id] * rows, pa.string())]


def score_batch(batch: pa.RecordBatch, tower, scann, exact, *, top_n: int,
                max_scann_depth: int, model_version: str, run_id: str
                ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """One Arrow batch of histories (``user_id``, ``movie_ids``, ``ratings``) -> its rows of
    the recommendations and user-embeddings tables (:data:`RECOMMENDATIONS`,
    :data:`USER_EMBEDDINGS`), through :func:`recsys.scoring.recommend.recommend`."""
    from recsys.scoring import recommend as rec

    offsets, movie_ids = list_column(batch.column("movie_ids"))
    rating_offsets, ratings = list_column(batch.column("ratings"))
    if not np.array_equal(rating_offsets, offsets):  # only the last ratings were read
        ratings = ratings_at_ends(offsets, rating_offsets, ratings)
    recs = rec.recommend(
        tower, scann, exact, user_ids=batch.column("user_id").to_numpy().astype(np.int64),
        offsets=offsets, movie_ids=movie_ids.astype(np.int64, copy=False),
        ratings=ratings.astype(np.float32, copy=False), n=top_n,
        max_scann_depth=max_scann_depth)
    users = batch.column("user_id").cast(pa.int32())
    stamp = _stamp(batch.num_rows, model_version, run_id)
    emb = recs.embeddings.astype(np.float32)
    return (pa.RecordBatch.from_arrays(
                [users, ranked_movies(recs.movie_ids, recs.scores, recs.counts), *stamp],
                schema=RECOMMENDATIONS),
            pa.RecordBatch.from_arrays(
                [users, fixed_lists(pa.array(emb.reshape(-1)), emb.shape[0], emb.shape[1],
                                    EMBEDDING), *stamp],
                schema=USER_EMBEDDINGS))


#: Fault injection for the retry test (DESIGN §8): when set to a path, the first Python
#: worker that has written a batch creates that file and kills itself (SIGKILL) mid-task.
KILL_WORKER_ONCE = "RECSYS_TEST_KILL_WORKER_ONCE"


def _fault_point() -> None:
    marker = os.environ.get(KILL_WORKER_ONCE)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # a worker died here already: this is a retry
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _score_batches(train_dir: str, index_dir: str, *, top_n: int, max_scann_depth: int,
                   staging: dict[str, str], model_version: str, run_id: str):
    """The ``mapInArrow`` function: score each batch of histories and write the rows to
    this task's part file of each table (``staging``: table key -> staged directory)."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import recsys  # noqa: F401  (the worker's environment, set before any TensorFlow)
        from recsys.scoring.recommend import load_scoring_artifacts

        tower, scann, exact = load_scoring_artifacts(train_dir, index_dir)
        partition, attempt = task_identity()
        name = part_name(partition, attempt, run_id)
        # a failure aborts both files: a reused worker must not keep them open
        with PartWriter(staging["recommendations"], RECOMMENDATIONS, name) as recs_out, \
                PartWriter(staging["user_embeddings"], USER_EMBEDDINGS, name) as emb_out:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                recs, emb = score_batch(batch, tower, scann, exact, top_n=top_n,
                                        max_scann_depth=max_scann_depth,
                                        model_version=model_version, run_id=run_id)
                recs_out.write(recs)
                emb_out.write(emb)
                _fault_point()
            written = [(key, *done) for key, w in (("recommendations", recs_out),
                                                   ("user_embeddings", emb_out))
                       if (done := w.close())]
        yield pa.RecordBatch.from_arrays(
            [pa.array([w[0] for w in written], pa.string()),
             pa.array([w[1] for w in written], pa.string()),
             pa.array([w[2] for w in written], pa.int64())], names=["table", "file", "rows"])

    return score


def stage_similar_movies(index_dir: str, staging: str, *, model_version: str,
                         run_id: str) -> int:
    """Write tonight's similar-movies partition into ``staging`` (complete, with
    ``_SUCCESS``): the index run's table, computed once per model, with the stamp columns.
    The movie side is small, so the driver writes it with pyarrow — in a thread while
    the workers score — and it is committed with the other two tables. Returns its rows."""
    table = io.read_parquet(io.join(index_dir, similar.SIMILAR))
    n = table.num_rows
    for field, column in zip(_STAMP, _stamp(n, model_version, run_id)):
        table = table.append_column(field, column)
    try:
        table = table.select(SIMILAR_MOVIES.names).cast(SIMILAR_MOVIES)
    except (KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise artifacts.ArtifactError(
            f"{io.join(index_dir, similar.SIMILAR)} does not hold the similar-movies layout "
            f"{similar.SCHEMA}: {exc}") from None
    io.makedirs(staging)
    with PartWriter(staging, SIMILAR_MOVIES, part_name(0, 0, run_id)) as writer:
        for batch in table.to_batches():
            writer.write(batch)
        done = writer.close()
    keep_only(staging, [done[0]] if done else [])
    return n


@dataclass(frozen=True)
class ScoreInputs:
    """A scoring run's id and what it reads, verified (:func:`check_inputs`)."""
    run_id: str
    run_dir: str
    preprocess_dir: str
    train_dir: str
    index_dir: str
    model_version: str
    checked_s: float


def check_inputs(config: Config, *, run_id: str | None = None,
                 preprocess_run: str | None = None, train_run: str | None = None,
                 index_run: str | None = None) -> ScoreInputs:
    """The run id (checked: a configuration error first) and the preprocess, train and
    index runs verified against their manifests; then that the stage's directory and the
    embedded metastore's can be written (a file written and removed). Needs no Spark and
    leaves nothing: the job calls it before it starts Spark, so a missing or corrupt
    input, or a root it cannot write, costs no JVM and leaves no run behind (as in the
    other stages)."""
    start = time.perf_counter()
    root = config.artifact_root
    run_id, run_dir = artifacts.claim_run(root, STAGE, run_id)
    train_dir, index_dir, model_version = check_artifacts(
        root, train_run=train_run, index_run=index_run)
    preprocess_dir = artifacts.resolve(root, "preprocess", preprocess_run)
    artifacts.verify(preprocess_dir)
    check_users(train_dir, preprocess_dir, model_version)
    artifacts.check_writable(root, STAGE)
    check_metastore_dir(config.spark)
    return ScoreInputs(run_id, run_dir, preprocess_dir, train_dir, index_dir, model_version,
                       round(time.perf_counter() - start, 3))


def _unstage_on_failure(staged: list[str], table_root: str, run_dir: str,
                        spark_scratch: str | None):
    """An exit callback for the night's ExitStack: a failed run removes what it staged.
    Those files can never be published (a later run stages the whole night again), and
    a night of them is the size of the tables. A run killed outright leaves them to the
    next run of that night, or to the retention a day later."""

    def unstage(exc_type, exc, _tb) -> bool:
        if exc is None:
            return False
        for directory in staged:  # committed ones are no longer there
            try:
                io.delete(directory)
            except OSError as also:
                log.warning("could not remove the staged files %s: %s", directory, also)
        storage = io.storage_error(exc, writing=f"tonight's tables under {table_root} or "
                                                f"the run's record under {run_dir}",
                                   spark_scratch=spark_scratch)
        if storage is not None and storage is not exc and isinstance(exc, Exception):
            raise storage from exc  # the JVM's errors do not say which file was written
        return False

    return unstage


def _expire(spark: SparkSession, tables: dict[str, str], uris: dict[str, str], *,
            keep: int, tonight: str, run_id: str) -> dict[str, Any]:
    """``score.keep_nights``: each table's nights beyond its newest ``keep`` removed, once
    tonight's are published. A night that cannot be removed is said (warning, manifest)
    and stays; tonight's run still succeeds."""
    nights: set[str] = set()
    failed: list[str] = []
    for key, full in tables.items():
        gone, refused = expire_nights(spark, full, uris[key], keep=keep, tonight=tonight,
                                      run_id=run_id)
        nights.update(gone)
        failed.extend(refused)
    for line in failed:
        log.warning("score.keep_nights: %s", line)
    return {"keep_nights": keep, "nights": sorted(nights), "failed": failed}


def run_score(spark: SparkSession, config: Config, inputs: ScoreInputs, *,
              run_date: str | None = None) -> ScoreResult:
    """Score every user of the preprocess run's histories and publish the three tables."""
    root = config.artifact_root
    cfg = config.score
    run_date = artifacts.run_date(run_date, timezone=cfg.run_date_timezone)
    run_id, run_dir = inputs.run_id, inputs.run_dir
    preprocess_dir, train_dir = inputs.preprocess_dir, inputs.train_dir
    index_dir, model_version = inputs.index_dir, inputs.model_version
    manifest = artifacts.Manifest(STAGE, run_id, config)
    manifest["timings_s"]["check_inputs"] = inputs.checked_s
    scratch = local_dirs(spark)
    with artifacts.failure_recorded(run_dir, manifest, spark_scratch=scratch), \
            ExitStack() as night:
        manifest["inputs"] = {"preprocess_dir": preprocess_dir, "train_dir": train_dir,
                              "index_dir": index_dir, "model_version": model_version,
                              "run_date": run_date}
        if spark.sparkContext.getConf().get("spark.speculation", "false").lower() == "true":
            raise ConfigError(
                "score_all_users needs spark.speculation=false: its tasks write the table "
                "files themselves, and a speculative copy still running after the job "
                "could add a file to a published night")
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.batch_size))
        histories = read_histories(spark, io.join(preprocess_dir, "histories"),
                                   rating_window=rating_window(train_dir))
        table_root = cfg.table_root or io.join(root, "tables")
        names = {"recommendations": cfg.recommendations_table,
                 "user_embeddings": cfg.user_embeddings_table,
                 "similar_movies": cfg.similar_movies_table}
        uris = {key: io.join(table_root, name) for key, name in names.items()}
        try:  # on the driver, before a task fails on it after scoring its users
            # One run per night, held to the end: a second would clear this one's staged
            # files as left-overs of a killed run (DESIGN §8, two runs at once).
            night.enter_context(claim_night(uris["recommendations"], run_date, run_id))
            staging = {key: stage_partition(uris[key], run_date, run_id) for key in names}
            for directory in staging.values():
                io.makedirs(directory)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the tables under {table_root} ({exc}): set score.table_root "
                "(by default <artifact_root>/tables) to a place this job and its executors "
                "can write") from None
        night.push(_unstage_on_failure(list(staging.values()), table_root, run_dir, scratch))
        similar_staging = staging.pop("similar_movies")
        published = {"run_id": run_id, "run_date": run_date, "model_version": model_version}
        columns = {"recommendations": RECOMMENDATIONS, "user_embeddings": USER_EMBEDDINGS,
                   "similar_movies": SIMILAR_MOVIES}

        def prepare_tables() -> dict[str, str]:
            """The catalog's tables (created, or their columns checked) while the workers
            score: a Hive metastore client takes about 2 s to start, and the first SQL
            statements of a JVM are slow. Tonight's partitions are added after commit."""
            return {key: prepare_table(spark, database=cfg.database, name=names[key],
                                       table_uri=uris[key], columns=columns[key])
                    for key in names}

        with ThreadPoolExecutor(2, thread_name_prefix="score-driver") as pool:
            catalog = pool.submit(prepare_tables)
            similar_rows = pool.submit(stage_similar_movies, index_dir, similar_staging,
                                       model_version=model_version, run_id=run_id)
            with manifest.timed("score_and_write"):
                written = histories.mapInArrow(_score_batches(
                    train_dir, index_dir, top_n=cfg.top_n, max_scann_depth=cfg.max_scann_depth,
                    staging=staging, model_version=model_version, run_id=run_id),
                    WRITTEN).collect()
            with manifest.timed("stage_similar_movies_wait"):
                movies = similar_rows.result()
            with manifest.timed("catalog_wait"):
                tables = catalog.result()  # a table with other columns stops the night here
        rows = {key: sum(w.rows for w in written if w.table == key) for key in staging}
        if len(set(rows.values())) != 1:
            raise RuntimeError(f"the scoring tasks wrote different numbers of rows per "
                               f"table: {rows}")
        manifest["counts"] = {"users": rows["recommendations"], "top_n": cfg.top_n,
                              "similar_movies": movies}
        with manifest.timed("publish"):
            for key, directory in staging.items():
                keep_only(directory, [w.file for w in written if w.table == key])
            for key, directory in {**staging, "similar_movies": similar_staging}.items():
                commit_partition(directory, table_uri=uris[key], run_date=run_date,
                                 run_id=run_id, manifest=published)
                add_night(spark, tables[key], run_date)
        if cfg.keep_nights:
            with manifest.timed("expire_nights"):
                manifest["expired"] = _expire(spark, tables, uris, keep=cfg.keep_nights,
                                              tonight=run_date, run_id=run_id)
        manifest["tables"] = {k: {"name": v, "partition": f"run_date={run_date}"}
                              for k, v in tables.items()}
        manifest["table_root"] = table_root
        artifacts.commit(root, STAGE, run_dir, manifest, config)
    return ScoreResult(run_dir, manifest, tables)
