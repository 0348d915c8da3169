"""Similar movies (DESIGN §4.4): each movie's nearest movies by embedding, itself excluded.

A function of the model alone (not of tonight's histories), so the index stage computes
it once per model with the exact searcher and writes ``similar_movies/`` (Parquet)
beside the searchers; scoring only publishes it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsys.csr import MOVIE_SCORES, ranked_movies
from recsys.index.searcher import MovieSearcher

SIMILAR = "similar_movies"
SCHEMA = pa.schema([("movie_id", pa.int32()), ("similar", MOVIE_SCORES)])


def nearest_movies(searcher: MovieSearcher, embeddings: np.ndarray, movie_ids: np.ndarray,
                   k: int, *, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(ids [M, k], scores [M, k]): the ``k`` best-scoring other movies of every movie."""
    k = min(k, max(movie_ids.size - 1, 0))
    ids = np.zeros((movie_ids.size, k), np.int64)
    scores = np.zeros((movie_ids.size, k), np.float32)
    for start in range(0, movie_ids.size, batch_size):
        stop = min(start + batch_size, movie_ids.size)
        found, s = searcher.search(embeddings[start:stop], k + 1)
        keep = found != movie_ids[start:stop, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        ids[start:stop] = np.take_along_axis(found, order, axis=1)
        scores[start:stop] = np.take_along_axis(s, order, axis=1)
    return ids, scores


def similar_table(movie_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> pa.Table:
    """The published layout: ``movie_id:int, similar:array<struct<movie_id:int, score:float>>``."""
    return pa.Table.from_arrays([pa.array(movie_ids.astype(np.int32)),
                                 ranked_movies(ids, scores)], schema=SCHEMA)
