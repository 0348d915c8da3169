"""Part files written by the workers, kept or dropped by the driver (recsys.publish.parts)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import io
from recsys.publish.parts import PartWriter, keep_only, part_name

SCHEMA = pa.schema([pa.field("user_id", pa.int32()), pa.field("value", pa.float32())])


def _batch(users: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(users, pa.int32()), pa.array([u / 2 for u in users], pa.float32())],
        schema=SCHEMA)


def test_a_writer_makes_one_file_of_its_batches_and_none_when_empty(tmp_path):
    directory = str(tmp_path / "staged")
    writer = PartWriter(directory, SCHEMA, part_name(3, 1, "r9"))
    writer.write(_batch([1, 2]))
    writer.write(_batch([5]))
    assert writer.close() == ("part-00003-r9-a1.parquet", 3)
    table = pq.read_table(tmp_path / "staged" / "part-00003-r9-a1.parquet")
    assert table.schema == SCHEMA and table.column("user_id").to_pylist() == [1, 2, 5]
    assert table.column("value").to_pylist() == [0.5, 1.0, 2.5]
    assert PartWriter(directory, SCHEMA, part_name(4, 0, "r9")).close() is None
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == [
        "part-00003-r9-a1.parquet"]


def test_a_batch_with_another_schema_is_refused_by_name(tmp_path):
    writer = PartWriter(str(tmp_path), SCHEMA, part_name(0, 0, "r"))
    other = pa.RecordBatch.from_arrays([pa.array([1], pa.int64())], names=["user_id"])
    with pytest.raises(ValueError, match="differs from the table's"):
        writer.write(other)


def test_only_the_files_of_successful_attempts_are_kept(tmp_path):
    directory = str(tmp_path / "staged")
    for partition, attempt in ((0, 0), (0, 1), (1, 0)):  # partition 0's first attempt died
        writer = PartWriter(directory, SCHEMA, part_name(partition, attempt, "r"))
        writer.write(_batch([partition * 10 + attempt]))
        writer.close()
    keep = [part_name(0, 1, "r"), part_name(1, 0, "r")]
    keep_only(directory, keep)
    names = sorted(p.name for p in (tmp_path / "staged").iterdir())
    assert names == ["_SUCCESS", *sorted(keep)]
    assert sorted(pq.read_table(directory).column("user_id").to_pylist()) == [1, 10]


def test_a_reported_file_that_is_missing_is_an_error(tmp_path):
    directory = str(tmp_path / "staged")
    writer = PartWriter(directory, SCHEMA, part_name(0, 0, "r"))
    writer.write(_batch([1]))
    writer.close()
    with pytest.raises(io.ArtifactIOError, match="missing"):
        keep_only(directory, [part_name(0, 0, "r"), part_name(1, 0, "r")])
    assert not (tmp_path / "staged" / "_SUCCESS").exists()


def test_an_aborted_attempt_leaves_a_file_that_the_commit_removes(tmp_path):
    directory = str(tmp_path / "staged")
    failed = PartWriter(directory, SCHEMA, part_name(0, 0, "r"))
    failed.write(_batch([1]))
    failed.abort()  # the task raised after its first batch
    failed.abort()  # twice is harmless
    retried = PartWriter(directory, SCHEMA, part_name(0, 1, "r"))
    retried.write(_batch([1, 2]))
    done = retried.close()
    assert done is not None
    keep_only(directory, [done[0]])
    assert pq.read_table(directory).column("user_id").to_pylist() == [1, 2]


def test_a_failure_inside_the_with_block_aborts_the_file_and_propagates(tmp_path):
    directory = str(tmp_path / "staged")
    with pytest.raises(RuntimeError, match="scoring failed"):
        with PartWriter(directory, SCHEMA, part_name(0, 0, "r")) as writer:
            writer.write(_batch([1]))
            raise RuntimeError("scoring failed")
    assert writer._writer is None and writer._sink is None  # released: nothing kept open
    assert writer.close() is None  # an aborted file is never reported as written
    with PartWriter(directory, SCHEMA, part_name(0, 1, "r")) as retried:
        retried.write(_batch([1, 2]))
        done = retried.close()
    keep_only(directory, [done[0]])
    assert pq.read_table(directory).column("user_id").to_pylist() == [1, 2]
