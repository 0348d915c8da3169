"""Protocols and baseline scorers on tiny hand-checked data."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.evaluate import protocol_metrics, rank
from recsys.evaluation.models import Ease, MostPopular
from recsys.evaluation.protocols import (TEST, TRAIN, VALIDATION, Corpus, Interactions,
                                         held_out_users, random_split, temporal)


def corpus() -> Corpus:
    # 4 users, 6 movies (ids 10..60 -> columns 0..5), ratings in time order
    rows = {
        1: [(0, 5.0), (1, 4.0), (2, 3.0)],           # train
        2: [(1, 5.0), (2, 4.0), (3, 4.0), (0, 2.0)],  # train
        3: [(2, 4.0), (3, 5.0)],                      # train
        4: [(0, 4.0), (4, 5.0), (1, 4.0)],            # test: hold-out = movie column 4
    }
    offsets = np.cumsum([0] + [len(r) for r in rows.values()]).astype(np.int64)
    columns = np.array([c for r in rows.values() for c, _ in r], np.int64)
    ratings = np.array([x for r in rows.values() for _, x in r], np.float32)
    history = Interactions(np.array(list(rows), np.int64), offsets, columns, ratings)
    holdout = np.zeros(columns.size, bool)
    holdout[offsets[3] + 1] = True
    return Corpus(np.arange(1, 7, dtype=np.int64) * 10, ["Drama"] * 6, history,
                  np.array([TRAIN, TRAIN, TRAIN, TEST], np.int8), holdout)


def test_held_out_users_fit_on_others_and_hide_the_hold_out():
    p = held_out_users(corpus(), TEST)
    assert p.fit.user_ids.tolist() == [1, 2, 3] and p.query.user_ids.tolist() == [4]
    assert p.query.columns.tolist() == [0, 1]  # column 4 hidden, time order kept
    assert p.truth[1].tolist() == [4] and p.exclude_seen


def test_temporal_targets_are_the_last_ratings():
    p = temporal(corpus())
    assert p.query.user_ids.tolist() == [1, 2, 3]
    assert p.truth[1].tolist() == [2, 0, 3]
    assert p.query.columns.tolist() == [0, 1, 1, 2, 3, 2]
    assert p.fit.columns.tolist() == p.query.columns.tolist()


def test_random_split_partitions_the_training_ratings():
    c = corpus()
    p = random_split(c, seed=1, test_fraction=0.5)
    train_ratings = int(np.diff(c.history.offsets)[:3].sum())
    assert p.fit.columns.size + p.truth[1].size <= train_ratings
    assert not p.exclude_seen and 4 not in p.query.user_ids


def test_most_popular_and_metrics_by_hand():
    p = held_out_users(corpus(), TEST)
    top = rank(MostPopular(p.fit, 6), p, 6, k=4)
    # fit counts: col0 2, col1 2, col2 3, col3 2, col4 0, col5 0 -> 2, then 0, 1, 3 (ties by
    # column), then 4, 5; the seen 0 and 1 removed
    assert top.tolist() == [[2, 3, 4, 5]]
    m = protocol_metrics(p, top, popular=np.array([2]), n_movies=6)
    assert m["recall@20"] == 1.0  # the one hold-out movie is found
    assert m["ndcg@100"] == pytest.approx(1 / np.log2(4))  # at rank 3
    assert m["coverage@100"] == pytest.approx(4 / 6)
    assert m["popular_share@100"] == pytest.approx(1 / 4)


def test_ease_matches_the_closed_form():
    p = held_out_users(corpus(), TEST)
    ease = Ease(p.fit, 6, l2=1.0)
    x = np.zeros((3, 6))
    for u, cols in enumerate([[0, 1, 2], [1, 2, 3, 0], [2, 3]]):
        x[u, cols] = 1
    inv = np.linalg.inv(x.T @ x + np.eye(6))
    b = np.eye(6) - inv / np.diag(inv)
    # movies 4 and 5 have no fitted rating: left out (their rows and columns of B are 0)
    assert ease.kept.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(ease.b, b[:4, :4], atol=1e-5)
    assert np.allclose(b[4:, :], 0) and np.allclose(b[:, 4:], 0)
    q = np.zeros((1, 6))
    q[0, [0, 1]] = 1
    got = ease.scores(p.query, slice(0, 1))
    np.testing.assert_allclose(got[:, :4], (q @ b)[:, :4], atol=1e-5)
    assert np.isneginf(got[:, 4:]).all()
    assert Ease(p.fit, 6, l2=1.0, min_count=3).kept.tolist() == [2]  # only movie 2 has 3
    with pytest.raises(ValueError, match="ease_max_movies"):
        Ease(p.fit, 6, max_movies=5)


def test_held_out_protocols_share_their_training_users_and_the_others_do_not():
    # the evaluation folds the test users into the ALS fit it tuned on the validation
    # users: that is only right when both protocols fit the very same ratings
    c = corpus()
    test_fit = held_out_users(c, TEST).fit
    assert test_fit.same(held_out_users(c, VALIDATION).fit)
    assert not test_fit.same(temporal(c).fit)  # same users, last ratings left out
    assert not test_fit.same(random_split(c, seed=0, test_fraction=0.5).fit)


def test_a_split_without_validation_or_test_users_is_refused_not_scored_as_nan():
    import dataclasses

    from recsys.config import ConfigError
    from recsys.evaluation.evaluate import _check_held_out_users

    c = corpus()  # one test user, no validation user
    with pytest.raises(ConfigError, match="preprocess run p1 has no validation users, which "
                                          "the evaluation needs"):
        _check_held_out_users(c, "p1")
    no_test = dataclasses.replace(c, roles=np.array([TRAIN] * 4, np.int8))
    with pytest.raises(ConfigError, match="has no validation and no test users.*"
                                          "nightly.evaluate = false"):
        _check_held_out_users(no_test, "p1")
    both = dataclasses.replace(c, roles=np.array([TRAIN, VALIDATION, TRAIN, TEST], np.int8))
    _check_held_out_users(both, "p1")


def test_what_the_configuration_leaves_out_is_said_in_the_report():
    from recsys.config import EvaluateConfig
    from recsys.evaluation.evaluate import not_run
    from recsys.evaluation.report import markdown

    c = corpus()  # 6 movies
    assert not_run(c, EvaluateConfig()) == []
    notes = not_run(c, EvaluateConfig(ease_max_movies=5, random_split_two_tower=False))
    assert notes[0].startswith("EASE, on every protocol: the catalog has 6 movies, more than "
                               "evaluate.ease_max_movies = 5")
    assert "evaluate.random_split_two_tower = false" in notes[1] and len(notes) == 2
    page = markdown({"run_id": "e1", "model_version": "m1", "preprocess_run": "p1",
                     "movies": 6, "protocols": [], "not_run": notes}, {})
    assert f"Not run: {notes[0]}" in page and f"Not run: {notes[1]}" in page
