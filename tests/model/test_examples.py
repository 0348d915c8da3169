"""Training examples: no leakage, held-out users excluded, bounded sampling."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.model.examples import TEST, VALIDATION, held_out_users
from recsys.model.inputs import pad_histories, windows
from tests.model.conftest import USERS, rows_of, stream_of


def test_windows_are_left_padded_and_keep_the_last_items():
    movies = np.array([1, 2, 3, 4, 5, 6], np.int32)
    ratings = movies.astype(np.float32) / 2
    m, r = windows(movies, ratings, np.array([0, 4, 2]), np.array([4, 6, 2]), 3)
    assert m.tolist() == [[2, 3, 4], [0, 5, 6], [0, 0, 0]]
    assert r.tolist() == [[1.0, 1.5, 2.0], [0.0, 2.5, 3.0], [0.0, 0.0, 0.0]]
    pm, _ = pad_histories([np.array([7, 8]), np.array([9])], [np.ones(2), np.ones(1)], 3)
    assert pm.tolist() == [[0, 7, 8], [0, 0, 9]]


def test_history_rows_hold_only_earlier_ratings_of_their_user(world):
    catalog = world[0]
    stream = stream_of(world, length=4, k=4)  # k = L: every target of a window is drawn
    rows = rows_of(list(stream.epoch(0)))
    seen_targets = set()
    for i in range(rows["target"].shape[0]):
        window = catalog.id_of(rows["history_movies"][i][rows["history_movies"][i] > 0])
        owner = [u for u, (_, seq, _) in USERS.items() if window[0] in seq]
        assert len(owner) == 1
        role, seq, _ = USERS[owner[0]]
        assert role == "train"  # held-out users never appear in training
        for slot in np.flatnonzero(rows["target_mask"][i]):
            target = int(catalog.id_of(rows["target"][i, slot]))
            col = rows["target_column"][i, slot]
            visible = rows["history_movies"][i, : col + 1]
            visible = catalog.id_of(visible[visible > 0]).tolist()
            p = seq.index(target)
            assert 1 <= p <= len(seq) - 2  # never the first rating, never the last
            assert visible == seq[max(0, p - len(visible)):p]  # exactly what came before
            assert visible and target not in visible
            # the column right after the target's history holds the target itself
            if col + 1 < rows["history_movies"].shape[1]:
                assert catalog.id_of(rows["history_movies"][i, col + 1]) == target
            seen_targets.add((owner[0], target))
    expected = {(u, m) for u, (role, seq, _) in USERS.items() if role == "train"
                for m in seq[1:-1]}
    assert seen_targets == expected  # every eligible target once per uncapped epoch


def test_examples_per_user_bounds_the_epoch(world):
    stream = stream_of(world, length=3, k=2, per_user=4)
    rows = rows_of(list(stream.epoch(3)))
    assert rows["target_mask"].sum() <= 2 * 4
    scan = stream.scan()
    assert scan.rows_per_epoch == rows["target"].shape[0]
    assert scan.train_users == 2


def test_epochs_are_deterministic_per_seed_and_differ_between_epochs(world):
    a = rows_of(list(stream_of(world, per_user=4, k=2).epoch(1)))
    b = rows_of(list(stream_of(world, per_user=4, k=2).epoch(1)))
    c = rows_of(list(stream_of(world, per_user=4, k=2).epoch(2)))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)


def test_mf_targets_fold_in_held_out_inputs_but_never_their_hold_out(world):
    catalog = world[0]
    stream = stream_of(world, kind="mf", k=4)
    rows = rows_of(list(stream.epoch(0)))
    targets = set(catalog.id_of(rows["target"][rows["target_mask"]]).tolist())
    held = {m for _, (_, _, hold) in USERS.items() for m in hold}
    assert not targets & held
    assert {25, 26, 28} <= targets  # validation user's input ratings are fold-in targets
    assert 12 not in targets and 24 not in targets  # training users' last ratings are kept


def test_held_out_users_split_inputs_from_truth(world):
    catalog = world[0]
    stream = stream_of(world)
    val = held_out_users(stream, VALIDATION)
    assert val.user_ids.tolist() == [3]
    assert catalog.id_of(val.inputs.movies).tolist() == [25, 26, 28, 29, 31, 32]
    assert sorted(catalog.id_of(val.truth[1]).tolist()) == [27, 30]
    test = held_out_users(stream, TEST)
    assert test.user_ids.tolist() == [4] and catalog.id_of(test.truth[1]).tolist() == [35]


def _owner_of(catalog, window_row):
    first = int(catalog.id_of(window_row[window_row > 0])[0])
    return next(u for u, (_, seq, _) in USERS.items() if first in seq)


def test_held_out_set_rows_hide_their_targets_from_their_own_window(world):
    catalog = world[0]
    stream = stream_of(world, length=20, k=20, per_user=60, objective="held_out_set",
                       set_holdout_fraction=0.3)
    rows = rows_of(list(stream.epoch(0)))
    n_rows = rows["target"].shape[0]
    assert n_rows == stream.scan().rows_per_epoch == 2 * 3  # 2 training users x 3 rows
    assert (rows["target_column"] == 19).all()  # every query is the whole window's state
    owners = []
    for i in range(n_rows):
        owner = _owner_of(catalog, rows["history_movies"][i])
        role, seq, _ = USERS[owner]
        assert role == "train"  # held-out users never appear in training
        owners.append(owner)
        targets = catalog.id_of(rows["target"][i][rows["target_mask"][i]]).tolist()
        window = catalog.id_of(rows["history_movies"][i][rows["history_movies"][i] > 0]).tolist()
        assert len(targets) >= 1 and len(set(targets)) == len(targets)
        assert set(targets) <= set(seq[1:-1])  # never the first rating, never the last
        # the window is everything else before the last rating, in time order: later
        # ratings than a target included (this objective is not causal, on purpose)
        assert window == [m for m in seq[:-1] if m not in targets]
    assert sorted(owners) == [1, 1, 1, 2, 2, 2]


def test_held_out_set_hides_about_the_configured_share_and_keeps_the_last_window(world):
    catalog = world[0]
    stream = stream_of(world, length=4, k=20, per_user=4000, objective="held_out_set",
                       set_holdout_fraction=0.3)
    rows = rows_of(list(stream.epoch(1)))
    hidden = rows["target_mask"].sum(axis=1)
    assert rows["target"].shape[0] == 2 * 200
    # 10 candidates per user (positions 1..10), each hidden with p = 0.3, at least one
    assert 2.7 < hidden.mean() < 3.4, hidden.mean()
    assert hidden.min() >= 1
    for i in range(0, rows["target"].shape[0], 37):
        owner = _owner_of(catalog, rows["history_movies"][i])
        seq = USERS[owner][1]
        targets = set(catalog.id_of(rows["target"][i][rows["target_mask"][i]]).tolist())
        shown = [m for m in seq[:-1] if m not in targets]
        assert catalog.id_of(rows["history_movies"][i]).tolist() == shown[-4:]


def test_held_out_set_caps_targets_per_row_and_respects_the_target_rating(world):
    catalog = world[0]
    stream = stream_of(world, length=20, k=2, per_user=40, objective="held_out_set",
                       set_holdout_fraction=0.9, min_target_rating=4.0)
    rows = rows_of(list(stream.epoch(0)))
    assert rows["target_mask"].sum(axis=1).max() <= 2
    targets = catalog.id_of(rows["target"][rows["target_mask"]])
    assert set((1 + targets % 5).tolist()) <= {4, 5}  # the fixture's rating of movie m
    for i in range(rows["target"].shape[0]):
        window = rows["history_movies"][i][rows["history_movies"][i] > 0]
        slots = rows["target"][i][rows["target_mask"][i]]
        assert not set(window.tolist()) & set(slots.tolist())


def test_unknown_objective_or_mf_with_held_out_set_is_refused(world):
    with pytest.raises(ValueError, match="train.objective must be one of"):
        stream_of(world, objective="cloze")
    with pytest.raises(ValueError, match="needs model.kind = 'history'"):
        stream_of(world, kind="mf", objective="held_out_set")
    with pytest.raises(ValueError, match="set_holdout_fraction must be in"):
        stream_of(world, objective="held_out_set", set_holdout_fraction=1.0)
