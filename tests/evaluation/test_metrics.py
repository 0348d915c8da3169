"""Ranking metrics on tiny hand-checked lists, and exact top-K against a plain sort."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.evaluation.metrics import (
    csr_from_lists, hits_matrix, most_popular_scores, ranking_metrics, top_k_exact,
)


def test_hits_recall_and_ndcg_by_hand():
    ranked = np.array([[5, 3, 9, 1], [2, 4, 6, 8]])
    relevant = csr_from_lists([[3, 1, 7], [8]])
    hits = hits_matrix(ranked, relevant)
    assert hits.tolist() == [[False, True, False, True], [False, False, False, True]]
    m = ranking_metrics(ranked, relevant, recall_ks=(2, 4), ndcg_ks=(4,), hit_ks=(2,))
    # user 0: 1 hit in top 2 of min(2, 3) = 2 -> 0.5; user 1: 0 of min(2, 1) -> 0
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    # top 4: user 0 finds 2 of min(4, 3) = 3; user 1 finds 1 of 1
    assert m["recall@4"] == pytest.approx((2 / 3 + 1.0) / 2)
    d = [1 / math.log2(i + 2) for i in range(4)]
    ndcg0 = (d[1] + d[3]) / (d[0] + d[1] + d[2])
    ndcg1 = d[3] / d[0]
    assert m["ndcg@4"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["users"] == 2


def test_users_without_relevant_items_are_skipped():
    ranked = np.array([[1, 2], [1, 2]])
    m = ranking_metrics(ranked, csr_from_lists([[1], []]), recall_ks=(1,), ndcg_ks=(1,))
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0 and m["users"] == 1


def test_top_k_exact_matches_a_full_sort_and_excludes_seen():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(37, 8)), rng.normal(size=(50, 8))
    seen = csr_from_lists([rng.choice(np.arange(1, 50), size=rng.integers(0, 20), replace=False)
                           for _ in range(37)])
    top, scores = top_k_exact(lambda rows: users[rows] @ items.T, 37, 10, seen, batch_size=8)
    full = users @ items.T
    for u in range(37):
        banned = set(seen[1][seen[0][u]:seen[0][u + 1]].tolist()) | {0}
        order = [i for i in np.argsort(-full[u], kind="stable") if i not in banned][:10]
        assert top[u].tolist() == order
        assert np.allclose(scores[u], full[u, order])
        assert np.all(np.diff(scores[u]) <= 0)


def test_most_popular_ranks_by_count():
    top, _ = top_k_exact(most_popular_scores(np.array([0, 5, 9, 1, 7])), 2, 3,
                         csr_from_lists([[2], []]))
    assert top.tolist() == [[4, 1, 3], [2, 4, 1]]
