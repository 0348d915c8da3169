"""Helpers for the numpy stages that run inside ``mapInArrow``."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc


def partition_table(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    """All record batches of a partition as one table; None for an empty partition."""
    batches = list(batches)
    if not batches or sum(b.num_rows for b in batches) == 0:
        return None
    return pa.Table.from_batches(batches)


def split_tagged(table: pa.Table) -> tuple[pa.Table, dict[str, list]]:
    """(valid rows as a table, quarantined rows as Python lists by column) of a tagged
    partition: a row is valid when its ``reason`` is null."""
    valid = table.column("reason").is_null()
    return table.filter(valid), table.filter(pc.invert(valid)).to_pydict()
