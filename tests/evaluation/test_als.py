"""ALS baseline: fold-in of users ALS never saw, checked against Spark's own solve."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.als import AlsSettings, fold_in
from recsys.evaluation.models import AlsFit, AlsScorer
from recsys.evaluation.protocols import Interactions


def _ratings(seed: int = 3, users: int = 40, movies: int = 25) -> Interactions:
    rng = np.random.default_rng(seed)
    cols, rates, counts = [], [], []
    for _ in range(users):
        n = int(rng.integers(3, 12))
        cols.append(rng.choice(movies, n, replace=False))
        rates.append(rng.integers(1, 11, n) / 2.0)
        counts.append(n)
    return Interactions(np.arange(1, users + 1, dtype=np.int64) * 7,
                        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                        np.concatenate(cols).astype(np.int64),
                        np.concatenate(rates).astype(np.float32))


@pytest.mark.parametrize("implicit", [False, True])
def test_fold_in_gives_back_the_factors_spark_fitted(spark, implicit):
    # Spark's last half-iteration solves each user's normal equations against the final
    # item factors: folding a fitted user in again must land on the same vector.
    fit = _ratings()
    catalog = np.arange(25, dtype=np.int64) + 100
    settings = AlsSettings(rank=4, reg_param=0.1, max_iter=5, implicit=implicit, alpha=2.0,
                           seed=1, blocks=2)
    model = AlsFit(spark, fit, catalog, settings)
    assert model.known_item.all() and model.user_ids.tolist() == fit.user_ids.tolist()
    again = fold_in(model.items, fit.offsets, fit.columns, fit.ratings, settings)
    np.testing.assert_allclose(again, model.user_factors, rtol=2e-3, atol=2e-4)
    # ... and a different regularization gives a different vector: the test can fail
    other = fold_in(model.items, fit.offsets, fit.columns, fit.ratings,
                    AlsSettings(rank=4, reg_param=1.0, implicit=implicit, alpha=2.0))
    assert np.abs(other - model.user_factors).max() > 1e-2


def test_fold_in_by_hand():
    items = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    offsets = np.array([0, 2, 2])
    cols = np.array([0, 1])
    ratings = np.array([4.0, 2.0])
    # explicit: (y0y0' + y1y1' + 0.5*2 I) x = 4 y0 + 2 y1 -> diag(2, 5) x = (4, 4)
    x = fold_in(items, offsets, cols, ratings, AlsSettings(rank=2, reg_param=0.5))
    np.testing.assert_allclose(x, [[2.0, 0.8], [0.0, 0.0]], rtol=1e-6)
    # implicit, alpha 1: YtY = [[2,1],[1,5]]; + 4 y0y0' + 2 y1y1' = [[6,1],[1,13]];
    # + 0.5*2 I = [[7,1],[1,14]]; b = 5 y0 + 3 y1 = (5, 6)
    x = fold_in(items, offsets, cols, ratings, AlsSettings(rank=2, reg_param=0.5,
                                                            implicit=True, alpha=1.0))
    np.testing.assert_allclose(x[0], np.linalg.solve([[7, 1], [1, 14]], [5, 6]), rtol=1e-6)


def test_scorer_folds_in_only_the_users_als_never_saw(spark):
    fit = _ratings()
    catalog = np.arange(26, dtype=np.int64) + 100  # column 25: no ratings at all
    settings = AlsSettings(rank=4, reg_param=0.1, max_iter=5, implicit=True, seed=1, blocks=2)
    model = AlsFit(spark, fit, catalog, settings)
    newcomer = Interactions(np.array([7, 999], np.int64), np.array([0, 2, 5], np.int64),
                            np.array([0, 1, 2, 3, 25], np.int64),
                            np.array([5.0, 4.0, 3.0, 4.5, 5.0], np.float32))
    scorer = AlsScorer(model, newcomer)
    assert scorer.folded_in == 1
    np.testing.assert_array_equal(scorer.query_factors[0], model.user_factors[0])  # user 7
    expect = fold_in(model.items, np.array([0, 2]), np.array([2, 3]),
                     np.array([3.0, 4.5]), settings)  # column 25 has no factors: left out
    np.testing.assert_allclose(scorer.query_factors[1], expect[0], rtol=1e-6)
    scores = scorer.scores(newcomer, slice(0, 2))
    assert np.isneginf(scores[:, 25]).all() and np.isfinite(scores[:, :25]).all()
