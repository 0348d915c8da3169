"""Ranking metrics on tiny hand-checked lists, and exact top-K against a plain sort."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.evaluation.metrics import (
    csr_from_lists, hits_matrix, most_popular_scores, paired_bootstrap, per_user,
    ranking_metrics, top_k_exact,
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


def test_per_user_parts_rebuild_each_metric_by_hand():
    ranked = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [1, 2, 3, 4]])
    relevant = csr_from_lists([[3, 1, 7], [8], []])
    hits, n_rel = hits_matrix(ranked, relevant), np.array([3, 1, 0])
    num, den = per_user(hits, n_rel, "recall@2")  # the third user has nothing to find
    assert num.tolist() == [0.5, 0.0] and den.tolist() == [1.0, 1.0]
    m = ranking_metrics(ranked, relevant, recall_ks=(2,), hit_ks=(4,))
    assert num.sum() / den.sum() == pytest.approx(m["recall@2"])
    assert per_user(hits, n_rel, "hr@4")[0].tolist() == [1.0, 1.0]
    # top-K accuracy pools ratings: 3 hits in the top 4 out of 4 relevant ratings
    num, den = per_user(hits, n_rel, "top4_accuracy")
    assert num.tolist() == [2.0, 1.0] and den.tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="ndcg@10"):
        per_user(hits, n_rel, "ndcg@10")


def test_paired_bootstrap_difference_and_interval():
    ones = np.ones(4)
    a = (np.array([1.0, 0.0, 1.0, 1.0]), ones)
    diff, low, high = paired_bootstrap(a, a)
    assert (diff, low, high) == (0.0, 0.0, 0.0)  # the same model: no difference at all
    shifted = (a[0] - 0.25, ones)  # b is a minus 0.25 on every user: the pairing cancels
    diff, low, high = paired_bootstrap(a, shifted)
    assert diff == pytest.approx(0.25) and low == pytest.approx(0.25)
    assert high == pytest.approx(0.25)
    # one user in 200 better, the rest equal: a small difference, an interval from 0
    n = 200
    better = np.zeros(n)
    better[0] = 1.0
    diff, low, high = paired_bootstrap((better, np.ones(n)), (np.zeros(n), np.ones(n)))
    assert diff == pytest.approx(1 / n) and low == 0.0 and 0 < high <= 3 / n
    # independent noise: the interval straddles the true difference of 0.1
    rng = np.random.default_rng(1)
    x = rng.random(400)
    diff, low, high = paired_bootstrap((x + 0.1, np.ones(400)), (x + rng.normal(0, 0.05, 400),
                                                                 np.ones(400)))
    assert low < 0.1 < high and high - low < 0.03
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(a, (np.ones(3), np.ones(3)))


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
