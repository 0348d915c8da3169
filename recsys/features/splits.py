"""The evaluation split assignment (DESIGN §6), decided once per corpus in preprocessing.

Deterministic for a seed and independent of partitioning: every random choice is a hash
(splitmix64) of (seed, user) or (seed, user, movie), never a random generator's state.

Columns, one row per user:

* ``role`` — ``train``, ``validation`` or ``test``. Only users with at least
  ``min_positives`` ratings >= ``positive_threshold`` can be held out; validation and
  test users never appear in training (strong generalization, Liang et al. 2018).
* ``holdout_movie_ids`` — for held-out users, a random ``holdout_fraction`` (at least
  one, rounded half to even) of their positives: what the model must predict, sorted.
  Empty for training users.
* ``last_movie_id`` / ``last_timestamp`` — the user's last rating by time (ties broken
  by movie id), the target of the temporal next-item protocol.
"""

from __future__ import annotations

import numpy as np

from recsys.config import SplitConfig

ROLES = ("train", "validation", "test")
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, vectorized (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def hash_ids(seed: int, *ids: np.ndarray) -> np.ndarray:
    h = _mix(np.full(np.shape(ids[0]), np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    for part in ids:
        h = _mix(h ^ np.asarray(part).astype(np.int64).astype(np.uint64))
    return h


def unit_interval(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(
    user_ids: np.ndarray,
    offsets: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    config: SplitConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roles and hold-out sets for users whose histories are ``movies[offsets[i]:offsets[i+1]]``.

    Returns (role index per user into :data:`ROLES`, hold-out offsets, hold-out movie ids).
    """
    n_users = user_ids.size
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n_users), lengths)
    positive = ratings >= config.positive_threshold
    n_pos = np.bincount(owner[positive], minlength=n_users)

    u = unit_interval(hash_ids(config.seed, np.zeros(n_users, np.int64), user_ids))
    eligible = n_pos >= config.min_positives
    role = np.zeros(n_users, dtype=np.int8)
    role[eligible & (u < config.test_users_fraction + config.validation_users_fraction)] = 1
    role[eligible & (u < config.test_users_fraction)] = 2

    held_users = role > 0
    n_hold = np.where(held_users, np.maximum(1, np.round(n_pos * config.holdout_fraction)), 0)
    n_hold = n_hold.astype(np.int64)
    pick = positive & held_users[owner]
    p_owner, p_movie = owner[pick], movies[pick]
    key = hash_ids(config.seed, np.ones(p_owner.size, np.int64), user_ids[p_owner], p_movie)
    order = np.lexsort((key, p_owner))
    p_owner, p_movie = p_owner[order], p_movie[order]
    first = np.searchsorted(p_owner, np.arange(n_users))
    rank = np.arange(p_owner.size) - first[p_owner]
    chosen = rank < n_hold[p_owner]
    h_owner, h_movie = p_owner[chosen], p_movie[chosen]
    order = np.lexsort((h_movie, h_owner))
    h_movie = h_movie[order]
    h_offsets = np.r_[0, np.cumsum(np.bincount(h_owner, minlength=n_users))]
    return role, h_offsets, h_movie
