"""Per-user flat arrays (CSR): user ``u`` owns ``values[offsets[u]:offsets[u+1]]``.

The shared helpers for the layout every stage uses for histories: reading an Arrow list
column into (offsets, values), and the flat positions of a set of users' ranges.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorized."""
    shift = starts - np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(shift, counts) + np.arange(int(counts.sum()))


def list_column(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets starting at 0, flat values) of an Arrow list column, sliced or not."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return offsets - offsets[0], values


#: ``array<struct<movie_id:int, score:float>>``: a ranked movie list (recommendations,
#: similar movies), elements never null.
MOVIE_SCORES = pa.list_(pa.field("element", pa.struct([("movie_id", pa.int32()),
                                                       ("score", pa.float32())]),
                                 nullable=False))


def fixed_lists(values: pa.Array, rows: int, width: int, type_: pa.DataType) -> pa.ListArray:
    """A list column of ``rows`` lists of ``width`` items each, from the flat ``values``."""
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, values, type=type_)


def ranked_movies(ids: np.ndarray, scores: np.ndarray, counts: np.ndarray | None = None
                  ) -> pa.ListArray:
    """[rows, k] movie ids and scores, best first, as a :data:`MOVIE_SCORES` column; with
    ``counts``, row ``r`` keeps only its first ``counts[r]`` (the rest is padding)."""
    rows, width = ids.shape
    if counts is not None and (counts < width).any():
        keep = np.arange(width) < counts[:, None]
        offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), _pairs(ids[keep], scores[keep]),
                                        type=MOVIE_SCORES)
    return fixed_lists(_pairs(ids, scores), rows, width, MOVIE_SCORES)


def _pairs(ids: np.ndarray, scores: np.ndarray) -> pa.StructArray:
    return pa.StructArray.from_arrays(
        [pa.array(ids.reshape(-1).astype(np.int32)),
         pa.array(scores.reshape(-1).astype(np.float32))],
        fields=list(MOVIE_SCORES.value_type))
