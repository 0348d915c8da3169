"""Searchers against an exact numpy ground truth; save/load gives identical results."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.index.searcher import MovieSearcher, recall_at_k, scann_settings


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_top_k(queries, db, ids, k):
    scores = queries @ db.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_exact_searcher_is_the_numpy_ground_truth():
    db, q = clustered(3000, 16, 0), clustered(50, 16, 1)
    ids = np.arange(3000) * 7 + 3  # movie ids, not positions
    searcher = MovieSearcher.build(db, ids, kind="exact", num_neighbors=20)
    got_ids, got_scores = searcher.search(q, 20)
    want_ids, want_scores = numpy_top_k(q, db, ids, 20)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert recall_at_k(got_ids, want_ids) == 1.0
    assert np.all(np.diff(got_scores, axis=1) <= 1e-6)


def test_sizing_rule():
    small = scann_settings(62_423, 100)  # the ml-25m catalog: hashing over every movie
    assert (small.num_leaves, small.leaves_to_search, small.reorder) == (1, 1, 1000)
    big = scann_settings(1_000_000, 100)
    assert (big.num_leaves, big.leaves_to_search, big.reorder) == (1000, 500, 1000)
    given = scann_settings(62_423, 100, leaves=300, leaves_to_search=900, reorder=50)
    assert (given.num_leaves, given.leaves_to_search, given.reorder) == (300, 300, 100)


@pytest.mark.parametrize("leaves", [0, 60], ids=["sized", "tree"])
def test_scann_recall_is_measured_and_survives_serialization(tmp_path, leaves):
    db, q = clustered(6000, 16, 2), clustered(300, 16, 3)
    ids = np.arange(6000) + 1
    settings = scann_settings(6000, 50, leaves=leaves)
    assert settings.num_leaves == (leaves or 1)
    searcher = MovieSearcher.build(db, ids, kind="scann", num_neighbors=50, settings=settings)
    approx, _ = searcher.search(q, 50)
    exact, _ = numpy_top_k(q, db, ids, 50)
    assert recall_at_k(approx, exact) >= 0.95
    searcher.save(str(tmp_path / "s"))
    again = MovieSearcher.load(str(tmp_path / "s"))
    a2, s2 = again.search(q, 50)
    np.testing.assert_array_equal(a2, approx)
    assert again.info == searcher.info and again.kind == "scann"
    deeper, _ = again.search(q[:3], 500)  # deeper than built for
    assert deeper.shape == (3, 500)


def test_bad_inputs_are_named():
    db = clustered(100, 8, 4)
    with pytest.raises(ValueError, match="do not match 99 movie ids"):
        MovieSearcher.build(db, np.arange(99), kind="exact")
    bad = db.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MovieSearcher.build(bad, np.arange(100), kind="exact")
    s = MovieSearcher.build(db, np.arange(100), kind="exact", num_neighbors=5)
    with pytest.raises(ValueError, match="index dimension 8"):
        s.search(np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="'exact' or 'scann'"):
        MovieSearcher.build(db, np.arange(100), kind="lsh")
