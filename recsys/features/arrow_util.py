"""Helpers for the numpy stages that run inside ``mapInArrow``."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa


def partition_table(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    """All record batches of a partition as one table; None for an empty partition."""
    batches = list(batches)
    if not batches or sum(b.num_rows for b in batches) == 0:
        return None
    return pa.Table.from_batches(batches)
