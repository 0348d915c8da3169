"""Parquet part files written by the Python workers themselves, committed by the driver.

The scoring UDF already holds each batch's result as Arrow columns; handing them back to
Spark only for Spark to turn them into rows and encode them as Parquet again cost more
than the scoring itself on the full-scale corpus (BENCHMARKS.md). So each task writes its
partition's rows straight into the staging directory of tonight's partition
(:func:`recsys.publish.tables.stage_partition`) and returns one small row per file: the
only thing the driver collects.

Commit protocol (the role Spark's ``FileOutputCommitter`` plays for its own writes):

* a task attempt writes ``part-<partition>-<run_id>-a<attempt>.parquet``: a retried or
  speculative attempt never writes over another attempt's file;
* the driver keeps exactly the files named by the tasks that succeeded
  (:func:`keep_only`) and deletes the rest (attempts that died or lost), then writes
  ``_SUCCESS``; only after that does the staged directory become visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from recsys import io
from recsys.publish.tables import SUCCESS


def part_name(partition: int, attempt: int, run_id: str) -> str:
    return f"part-{partition:05d}-{run_id}-a{attempt}.parquet"


def task_identity() -> tuple[int, int]:
    """(partition id, attempt number) of the running Spark task; (0, 0) outside Spark."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return 0, 0
    return context.partitionId(), context.attemptNumber()


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet dictionary encoding: the top-level strings (the stamp
    columns, one value per night). Unique user ids, scores and embeddings have nothing
    to share; trying costs more than the rest of the write. Measured on the rows of
    16,384 users (recommendations and embeddings, four batches of 4,096 with random ids
    and scores, one core): 1.33 s written with dictionaries for every column, 0.08 s for
    the strings only, and the files 22% smaller."""
    return [f.name for f in schema if pa.types.is_string(f.type)]


@dataclass
class PartWriter:
    """One Parquet file under ``directory``, opened at the first batch written.

    Batches must have ``schema`` exactly (the table's published schema); each becomes a
    row group. :meth:`close` returns the file's name and its rows, or None when no batch
    was written (an empty partition leaves no file). Used as a context manager, an
    exception inside the block aborts the file (:meth:`abort`).
    """

    directory: str
    schema: pa.Schema
    name: str
    rows: int = 0
    _writer: pq.ParquetWriter | None = None
    _sink: object = None

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.schema != self.schema:
            raise ValueError(f"batch schema {batch.schema} differs from the table's "
                             f"{self.schema}")
        with io.names_storage_errors(self.uri):  # pyarrow's write errors name no file
            if self._writer is None:
                self._sink = io.open_output(self.uri)
                self._writer = pq.ParquetWriter(self._sink, self.schema, compression="snappy",
                                                use_dictionary=dictionary_columns(self.schema))
            self._writer.write_batch(batch)
        self.rows += batch.num_rows

    @property
    def uri(self) -> str:
        return io.join(self.directory, self.name)

    def close(self) -> tuple[str, int] | None:
        if self._writer is None:
            return None
        with io.names_storage_errors(self.uri):  # the last row group is written here
            self._release()
        return self.name, self.rows

    def abort(self) -> None:
        """Close the file after a failure (the worker process may be reused); the driver
        deletes it, as no successful task names it."""
        self._release()

    def _release(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._sink is not None:
                self._sink.close()  # type: ignore[attr-defined]
            self._writer = self._sink = None


def keep_only(directory: str, names: list[str]) -> None:
    """Make ``directory`` hold exactly the part files ``names`` (plus non-part files),
    then mark it complete with ``_SUCCESS``. A name that is missing is an error: its
    task reported a file that is not there."""
    present = set(io.list_dir(directory))
    missing = sorted(set(names) - present)
    if missing:
        raise io.ArtifactIOError(f"part files reported by finished tasks are missing from "
                                 f"{directory}: {missing[:5]}")
    for stale in sorted(present - set(names)):
        if stale.startswith("part-"):
            io.delete(io.join(directory, stale))
    io.write_bytes(io.join(directory, SUCCESS), b"")
