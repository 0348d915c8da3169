"""Similar movies against a numpy ground truth, in the published Arrow layout."""

from __future__ import annotations

import numpy as np

from recsys.index.searcher import MovieSearcher
from recsys.index.similar import SCHEMA, nearest_movies, similar_table
from tests.index.test_searcher import clustered


def test_nearest_movies_exclude_the_movie_itself_and_match_numpy():
    db = clustered(500, 8, 5)
    ids = np.arange(500, dtype=np.int64) * 3 + 10
    exact = MovieSearcher.build(db, ids, kind="exact", num_neighbors=5)
    got, scores = nearest_movies(exact, db, ids, 5, batch_size=128)  # several batches
    s = db @ db.T
    np.fill_diagonal(s, -np.inf)
    want = ids[np.argsort(-s, axis=1, kind="stable")[:, :5]]
    assert got.shape == (500, 5) and not (got == ids[:, None]).any()
    same = [np.intersect1d(a, b).size for a, b in zip(got, want)]
    assert np.mean(same) >= 4.99  # exact search, up to float ties
    np.testing.assert_allclose(scores, -np.sort(-s, axis=1)[:, :5], atol=1e-5)


def test_a_catalog_smaller_than_k_and_the_table_layout():
    db = clustered(3, 4, 6)
    ids = np.array([7, 8, 9])
    exact = MovieSearcher.build(db, ids, kind="exact", num_neighbors=3)
    got, scores = nearest_movies(exact, db, ids, 20)
    assert got.shape == (3, 2)
    assert [set(r) for r in got] == [{8, 9}, {7, 9}, {7, 8}]
    table = similar_table(ids, got, scores)
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    assert rows[0]["movie_id"] == 7 and [x["movie_id"] for x in rows[0]["similar"]] == \
        got[0].tolist()
    assert rows[2]["similar"][1]["score"] == np.float32(scores[2, 1])
