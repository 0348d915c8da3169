"""Publish a night's output as one ``run_date=YYYY-MM-DD`` partition of a Parquet table.

Readers must never see a half-written night (DESIGN §4.5):

1. The night is written into ``<tables>/_staging/<table>/run_date=<date>-<run_id>/``,
   beside the table's directory, not in it: a reader that globs every file below the
   table (DuckDB's ``read_parquet('<table>/**/*.parquet')``) would otherwise read a night
   being written as one more partition; Spark, Hive and pyarrow skip names starting with
   ``_`` anyway. It is written by Spark, or by the scoring workers themselves
   (:mod:`recsys.publish.parts`), and ends with ``_SUCCESS``; then ``_manifest.json``
   (hidden from readers, like ``_SUCCESS``) goes next to it.
2. The staged directory becomes ``<tables>/<table>/run_date=<date>`` in one step: a
   rename, or, when that night was published before, one ``renameat2(RENAME_EXCHANGE)``
   that swaps the staged and the published directory (Linux, local filesystems); the
   previous version, now in ``_staging``, is then deleted. A re-run replaces that night
   and nothing else.
3. The table is created in the Spark SQL catalog if needed (with its columns given), the
   night's partition added, and the table refreshed (:func:`register_table`).

A run killed before step 2 leaves only a ``_staging`` directory that no reader sees; the
next run of that night removes it. Every published partition holds ``_SUCCESS``.

Where no atomic exchange exists (HDFS and other remote filesystems), the previous version
is renamed into ``<tables>/_replaced/<table>/`` just before the new one is renamed in. A
run killed between those two renames leaves the night missing, not broken; the next run
of that night puts the previous version back before it writes anything
(:func:`restore_replaced`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from recsys import io
from recsys.config import ConfigError, SparkConfig
from recsys.publish import CatalogUnavailableError, side_dir
from recsys.spark import derby_holder, describe_process, embedded_metastore, jvm_pid

log = logging.getLogger(__name__)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Marks a staged night as completely written (Spark's own marker name).
SUCCESS = "_SUCCESS"


def partition_uri(table_uri: str, run_date: str) -> str:
    return io.join(table_uri, f"run_date={run_date}")


def publish_partition(spark: SparkSession, df: DataFrame, *, table_uri: str, run_date: str,
                      run_id: str, manifest: dict[str, Any], files: int | None = None) -> str:
    """Write ``df`` as the ``run_date`` partition of the table at ``table_uri``, atomically."""
    staging = stage_partition(table_uri, run_date, run_id)
    out = df.coalesce(files) if files else df
    out.write.mode("overwrite").parquet(staging)
    return commit_partition(staging, table_uri=table_uri, run_date=run_date,
                            run_id=run_id, manifest=manifest)


def stage_partition(table_uri: str, run_date: str, run_id: str) -> str:
    """The staging directory for tonight's partition (step 1), not yet created: what an
    earlier run of the same night left behind is restored or removed first."""
    if not _DATE.match(run_date):
        raise ValueError(f"run_date must look like YYYY-MM-DD, got {run_date!r}")
    restore_replaced(table_uri, run_date)
    staging = side_dir(table_uri, "staging")
    for stale in io.list_dir(staging):
        if stale.startswith(f"run_date={run_date}-"):
            io.delete(io.join(staging, stale))
    return io.join(staging, f"run_date={run_date}-{run_id}")


def commit_partition(staging: str, *, table_uri: str, run_date: str, run_id: str,
                     manifest: dict[str, Any]) -> str:
    """Make a complete staged directory (it holds ``_SUCCESS``) the published night
    (step 2); returns the partition's URI."""
    if not io.exists(io.join(staging, SUCCESS)):
        raise io.ArtifactIOError(f"{staging} has no {SUCCESS}: the write did not finish")
    final = partition_uri(table_uri, run_date)
    io.write_text(io.join(staging, "_manifest.json"), json.dumps(manifest, indent=2) + "\n")
    if not io.exists(final):
        io.move(staging, final)
    elif io.exchange(staging, final):
        io.delete(staging)  # the previous version, swapped out
    else:
        parked = side_dir(table_uri, "replaced")
        replaced = io.join(parked, f"run_date={run_date}-{run_id}")
        io.makedirs(parked)
        io.move(final, replaced)
        io.move(staging, final)
        io.delete(replaced)
    log.info("published %s", final)
    return final


def restore_replaced(table_uri: str, run_date: str) -> None:
    """Undo a non-atomic swap cut short: the night's previous version, set aside in
    ``_replaced/``, goes back in place if the night is missing; else it is removed."""
    final = partition_uri(table_uri, run_date)
    parked = side_dir(table_uri, "replaced")
    for name in sorted(io.list_dir(parked)):
        if not name.startswith(f"run_date={run_date}-"):
            continue
        if io.exists(final):
            io.delete(io.join(parked, name))
        else:
            log.warning("restoring %s from %s (an earlier run stopped mid-swap)", final, name)
            io.move(io.join(parked, name), final)


class CatalogMismatchError(ConfigError):
    """A table of that name is in the catalog, but its columns are not tonight's."""


def check_metastore_dir(config: SparkConfig) -> None:
    """The embedded metastore's directory (``spark.metastore_dir``) can be written: Derby
    keeps its database there, Hive its resources and the warehouse its files. Checked
    before Spark starts; Hive's own failure comes after the scoring, as a Java traceback
    ("Couldn't create directory .../hive-resources")."""
    if not (config.hive_catalog and config.metastore_dir):
        return  # the cluster's metastore (hive-site.xml), or no catalog
    place = os.path.abspath(config.metastore_dir)
    try:
        io.check_writable(place)
    except OSError as exc:
        raise CatalogUnavailableError(
            f"the Spark SQL catalog's metastore cannot be opened: cannot write {place} "
            f"({io.strerror(exc)}), where the embedded metastore keeps its database: set "
            "spark.metastore_dir to a directory this job can write. Nothing was published."
        ) from None


@contextmanager
def _metastore(spark: SparkSession) -> Iterator[None]:
    """The first use of the catalog, which starts the metastore client. Derby, the
    embedded metastore, admits one process at a time: when another process has it open
    (a notebook's Spark session, another job) that is said at once, before Hive retries
    for 20 s and prints some ten thousand lines of Java stack traces. Any other failure to
    start the client becomes :class:`CatalogUnavailableError` too, naming the metastore."""
    derby = embedded_metastore(spark)
    holder = derby_holder(derby) if derby else None
    if holder is not None and holder != jvm_pid(spark):
        raise CatalogUnavailableError(
            f"the Spark SQL catalog's metastore cannot be opened: the embedded metastore "
            f"{derby} admits one process at a time, and {describe_process(holder)} has it "
            "open. Stop that Spark session or job (or give this one its own "
            "spark.metastore_dir) and run again. Nothing was published.")
    try:
        yield
    except Exception as exc:  # pyspark's AnalysisException, py4j's Py4JJavaError
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if "MetaStoreClient" not in first:
            raise
        hint = (f"the embedded metastore {derby} admits one process at a time: is "
                "another Spark session or job open on the same spark.metastore_dir? Stop it "
                "and run again" if derby else
                "is the metastore server of the cluster's hive-site.xml up and reachable?")
        raise CatalogUnavailableError(
            f"the Spark SQL catalog's metastore cannot be opened ({first[:300]}); {hint}. "
            "Nothing was published.") from None


def _ddl(columns: pa.Schema) -> list[tuple[str, str]]:
    """(name, Spark SQL type) of each column of an Arrow schema, as the catalog lists them."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return [(f.name, f.dataType.simpleString()) for f in from_arrow_schema(columns).fields]


def _nights(table_uri: str) -> list[str]:
    """The run dates published under ``table_uri`` (its ``run_date=`` directories)."""
    return [name.split("=", 1)[1] for name in io.list_dir(table_uri)
            if name.startswith("run_date=") and _DATE.match(name.split("=", 1)[1])]


def prepare_table(spark: SparkSession, *, database: str, name: str, table_uri: str,
                  columns: pa.Schema) -> str:
    """Make sure the catalog has ``database.name``, the partitioned Parquet table at
    ``table_uri`` with the data ``columns`` and the partition column ``run_date date``;
    returns its full name. Tonight's partition is not added (:func:`add_night` does that
    once the night is committed), so this can run while the night is still being written.

    The first time, the table is created with its columns given (Spark infers nothing: no
    job over the files' footers) and with every night already on disk. A table of that
    name whose columns differ is refused with both lists named."""
    for part in (database, name):
        if not _NAME.match(part):
            raise ValueError(f"invalid table or database name {part!r}")
    full = f"{database}.{name}"
    want = [*_ddl(columns), ("run_date", "date")]
    with _metastore(spark):  # the first use of the catalog starts the metastore client
        exists = spark.catalog.databaseExists(database)
    if not exists:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    if spark.catalog.tableExists(full):
        have = [(c.name, c.dataType) for c in spark.catalog.listColumns(full)]
        if have != want:
            raise CatalogMismatchError(
                f"catalog table {full} has columns {_listed(have)}, but tonight's "
                f"output has {_listed(want)}: drop the table (DROP TABLE {full}; its files "
                f"stay) or publish under another table name (score.*_table)")
        where = _location(spark, full)
        if where is not None and not io.same_place(where, table_uri):
            # The night would be committed under table_uri and added to a table that reads
            # another directory: its readers would get an old night, or none, for it.
            raise CatalogMismatchError(
                f"catalog table {full} is at {where}, but this run publishes it at "
                f"{io.normalize_uri(table_uri)} (another artifact root or score.table_root "
                f"on the same catalog): drop the table (DROP TABLE {full}; its files stay, "
                f"and the next run registers it here with every night on disk), or give "
                f"this run a catalog of its own (spark.metastore_dir) or other table names "
                f"(score.database, score.*_table)")
        return full
    # Made first: for a location that does not exist yet, Spark logs a warning with a
    # Java stack trace (about 70 lines a table) in the first night's log.
    io.makedirs(table_uri)
    location = table_uri.replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {full} ("
              + ", ".join(f"`{col}` {kind}" for col, kind in want)
              + f") USING parquet PARTITIONED BY (run_date) LOCATION '{location}'")
    _add_partitions(spark, full, _nights(table_uri))
    return full


def _location(spark: SparkSession, full_name: str) -> str | None:
    """Where the catalog says the table's files are (``DESCRIBE TABLE EXTENDED``)."""
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED {full_name}").collect():
        if row.col_name == "Location":
            return row.data_type
    return None


def add_night(spark: SparkSession, full_name: str, run_date: str) -> None:
    """Tonight's (committed) partition into the catalog table (made by
    :func:`prepare_table`), and the table refreshed: one partition added, not a scan of
    every night (``RECOVER PARTITIONS``); a night published again is already there."""
    if not _DATE.match(run_date):
        raise ValueError(f"run_date must look like YYYY-MM-DD, got {run_date!r}")
    _add_partitions(spark, full_name, [run_date])
    spark.sql(f"REFRESH TABLE {full_name}")


def register_table(spark: SparkSession, *, database: str, name: str, table_uri: str,
                   columns: pa.Schema, run_date: str) -> str:
    """:func:`prepare_table` then :func:`add_night`: the committed night visible through
    the catalog as ``database.name``."""
    full = prepare_table(spark, database=database, name=name, table_uri=table_uri,
                         columns=columns)
    add_night(spark, full, run_date)
    return full


def expire_nights(spark: SparkSession, full_name: str, table_uri: str, *, keep: int,
                  tonight: str, run_id: str) -> tuple[list[str], list[str]]:
    """Remove the table's nights older than its ``keep`` newest (``score.keep_nights``):
    tonight's night is never one of them, even when it is older (a back-filled night).
    Each goes from the catalog first, so the table's readers stop seeing it, then its
    directory is renamed into ``<tables>/_expired/<table>/`` (a reader that reads the
    files sees the whole night or none of it) and deleted there; what a run killed while
    deleting left there goes first. Returns the nights removed and, for each that could
    not be, a line saying why; those stay published, and the next run tries again."""
    if keep < 1:
        return [], []
    nights = sorted(_nights(table_uri))
    old = [night for night in nights[:-keep] if night != tonight]
    expired = side_dir(table_uri, "expired")
    for left in io.list_dir(expired):
        try:
            io.delete(io.join(expired, left))
        except OSError as exc:
            log.warning("cannot remove %s (%s)", io.join(expired, left), io.strerror(exc))
    removed: list[str] = []
    failed: list[str] = []
    for night in old:
        try:
            spark.sql(f"ALTER TABLE {full_name} DROP IF EXISTS "
                      f"PARTITION (run_date = '{night}')")
        except Exception as exc:  # pyspark's AnalysisException, py4j's Py4JJavaError
            text = str(exc).strip()
            failed.append(f"{full_name} run_date={night}: the catalog refused to drop it "
                          f"({text.splitlines()[0][:300] if text else type(exc).__name__})")
            continue
        try:
            gone = io.join(expired, f"run_date={night}-{run_id}")
            io.move(partition_uri(table_uri, night), gone)
            io.delete(gone)
        except OSError as exc:
            failed.append(f"{full_name} run_date={night}: dropped from the catalog, but its "
                          f"files stay at {partition_uri(table_uri, night)} "
                          f"({io.strerror(exc)})")
            continue
        removed.append(night)
    if old:
        spark.sql(f"REFRESH TABLE {full_name}")
    if removed:
        log.info("%s: removed %d night(s) older than the newest %d: %s", full_name,
                 len(removed), keep, ", ".join(removed))
    return removed, failed


def _add_partitions(spark: SparkSession, full_name: str, nights: list[str]) -> None:
    if nights:
        spark.sql(f"ALTER TABLE {full_name} ADD IF NOT EXISTS "
                  + " ".join(f"PARTITION (run_date = '{night}')" for night in nights))


def _listed(columns: list[tuple[str, str]]) -> str:
    return "(" + ", ".join(f"{col} {kind}" for col, kind in columns) + ")"
