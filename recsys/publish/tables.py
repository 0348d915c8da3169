"""Publish a night's output as one ``run_date=YYYY-MM-DD`` partition of a Parquet table.

Readers must never see a half-written night (DESIGN §4.5):

1. The night is written into ``<table>/_staging/run_date=<date>-<run_id>/`` (names
   starting with ``_`` are invisible to Spark, Hive, DuckDB and pyarrow partition
   discovery) — by Spark, or by the scoring workers themselves
   (:mod:`recsys.publish.parts`) — and ends with ``_SUCCESS``; then ``_manifest.json``
   (hidden from readers, like ``_SUCCESS``) goes next to it.
2. The staged directory becomes ``<table>/run_date=<date>`` in one step: a rename, or,
   when that night was published before, one ``renameat2(RENAME_EXCHANGE)`` that swaps
   the staged and the published directory (Linux, local filesystems); the previous
   version, now in ``_staging``, is then deleted. A re-run replaces that night and
   nothing else.
3. The table is (created if needed and) refreshed in the Spark SQL catalog.

A run killed before step 2 leaves only a ``_staging`` directory that no reader sees; the
next run of that night removes it. Every published partition holds ``_SUCCESS``.

Where no atomic exchange exists (HDFS and other remote filesystems), the previous version
is renamed into ``_replaced/`` just before the new one is renamed in. A run killed between
those two renames leaves the night missing, not broken; the next run of that night puts
the previous version back before it writes anything (:func:`restore_replaced`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recsys import io

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
    for stale in io.list_dir(io.join(table_uri, "_staging")):
        if stale.startswith(f"run_date={run_date}-"):
            io.delete(io.join(table_uri, "_staging", stale))
    return io.join(table_uri, "_staging", f"run_date={run_date}-{run_id}")


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
        replaced = io.join(table_uri, "_replaced", f"run_date={run_date}-{run_id}")
        io.makedirs(io.join(table_uri, "_replaced"))
        io.move(final, replaced)
        io.move(staging, final)
        io.delete(replaced)
    log.info("published %s", final)
    return final


def restore_replaced(table_uri: str, run_date: str) -> None:
    """Undo a non-atomic swap cut short: the night's previous version, set aside in
    ``_replaced/``, goes back in place if the night is missing; else it is removed."""
    final = partition_uri(table_uri, run_date)
    parked = io.join(table_uri, "_replaced")
    for name in sorted(io.list_dir(parked)):
        if not name.startswith(f"run_date={run_date}-"):
            continue
        if io.exists(final):
            io.delete(io.join(parked, name))
        else:
            log.warning("restoring %s from %s (an earlier run stopped mid-swap)", final, name)
            io.move(io.join(parked, name), final)


def warm_catalog(spark: SparkSession, database: str) -> threading.Thread:
    """Connect the session's catalog (a Hive metastore client takes about 2 s to start) in
    a background thread, so that it overlaps long work such as scoring. Errors are left
    for :func:`register_table` to raise with its own context."""

    def connect() -> None:
        try:
            spark.catalog.databaseExists(database)
        except Exception:  # noqa: BLE001 - register_table reports it
            log.debug("catalog warm-up failed", exc_info=True)

    thread = threading.Thread(target=connect, name="warm-catalog", daemon=True)
    thread.start()
    return thread


def register_table(spark: SparkSession, *, database: str, name: str, table_uri: str) -> str:
    """Create (once) a Parquet table over ``table_uri`` and refresh what the catalog knows."""
    for part in (database, name):
        if not _NAME.match(part):
            raise ValueError(f"invalid table or database name {part!r}")
    full = f"{database}.{name}"
    if not spark.catalog.databaseExists(database):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    location = table_uri.replace("'", "\\'")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {full} USING parquet LOCATION '{location}'")
    if spark.catalog.getTable(full).tableType != "TEMPORARY":
        # the metastore tracks a partitioned table's partitions: add tonight's
        spark.sql(f"ALTER TABLE {full} RECOVER PARTITIONS")
    spark.sql(f"REFRESH TABLE {full}")
    return full
