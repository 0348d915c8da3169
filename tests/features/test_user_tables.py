"""The numpy core of the histories stage, on tiny hand-checked arrays."""

from __future__ import annotations

import numpy as np

from recsys.config import SplitConfig
from recsys.features.histories import user_tables
from recsys.features.splits import assign_splits, hash_ids


def _arrays(rows):
    u, m, r, t = zip(*rows)
    return (np.array(u, np.int32), np.array(m, np.int32), np.array(r, np.float32),
            np.array(t, np.int64))


def test_sorted_by_time_ties_by_movie_and_deduplicated():
    rows = [
        (7, 30, 4.0, 100), (7, 10, 3.0, 200), (7, 20, 5.0, 100),  # tie at t=100: 20 then 30
        (7, 10, 1.0, 50),  # older rating of (7, 10): quarantined
        (3, 5, 2.0, 9), (3, 5, 4.5, 9),  # same time: the higher rating wins
    ]
    cols, keep = user_tables(*_arrays(rows), SplitConfig())
    assert cols["user_id"].to_pylist() == [3, 7]
    assert cols["movie_ids"].to_pylist() == [[5], [20, 30, 10]]
    assert cols["timestamps"].to_pylist() == [[9], [100, 100, 200]]
    assert cols["ratings"].to_pylist() == [[4.5], [5.0, 4.0, 3.0]]
    assert cols["num_ratings"].to_pylist() == [1, 3]
    assert cols["mean_rating"].to_pylist() == [4.5, 4.0]
    assert cols["last_movie_id"].to_pylist() == [5, 10]
    assert keep.tolist() == [True, True, True, False, False, True]


def test_split_roles_and_holdout_sizes():
    config = SplitConfig(seed=1, min_positives=5, test_users_fraction=0.5,
                         validation_users_fraction=0.5, holdout_fraction=0.2)
    # user 0: 10 positives -> always held out (fractions sum to 1), 2 held out
    # user 1: 4 positives  -> not eligible, train
    movies = np.arange(14, dtype=np.int32)
    ratings = np.array([5.0] * 10 + [4.0] * 4, np.float32)
    offsets = np.array([0, 10, 14])
    role, h_off, h_movies = assign_splits(np.array([11, 12]), offsets, movies, ratings, config)
    assert role[1] == 0 and role[0] in (1, 2)
    assert h_off.tolist() == [0, 2, 2]
    assert set(h_movies) <= set(range(10))
    # deterministic: the two movies with the smallest hash keys
    keys = hash_ids(1, np.ones(10, np.int64), np.full(10, 11), np.arange(10))
    assert sorted(h_movies.tolist()) == sorted(np.argsort(keys)[:2].tolist())


def _splitmix64_reference(x: int) -> int:
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_hash_matches_a_plain_python_splitmix64():
    # h = mix(seed); for each id: h = mix(h ^ id) -- the split assignment depends on it
    h = _splitmix64_reference(42)
    for part in (0, 1):
        h = _splitmix64_reference(h ^ part)
    assert int(hash_ids(42, np.array([0]), np.array([1]))[0]) == h == 13151335708014940318
    assert len(set(hash_ids(42, np.arange(1000)).tolist())) == 1000
