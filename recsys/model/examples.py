"""Leakage-free training examples, streamed from the histories Parquet.

A training example is a (history, target) pair cut from one user's time-sorted ratings:
the target is the rating at position ``t`` and the history is what the user rated
*before* ``t`` (the last ``history_length`` of them, with their ratings). Nothing at or
after ``t`` is ever in the history.

Which ratings may be targets:

* ``history`` model — training users only (held-out users never appear), positions
  ``1 .. n-2``: a target needs at least one earlier rating, and each user's last rating
  is kept for the temporal next-item protocol (DESIGN §6).
* ``mf`` model — a user-id embedding cannot embed a user it never saw, so held-out users'
  *input* ratings (everything but their hold-out set) are targets too: the fold-in of
  Liang et al. 2018. Their hold-out ratings never are.

The ``history`` model has two training objectives (``train.objective``):

* ``next_item`` (the default, DESIGN §5) — as above: each target is predicted from the
  ratings before it, so nothing at or after ``t`` is ever in its history.
* ``held_out_set`` — each row hides a random share (``train.set_holdout_fraction``, at
  least one) of a training user's candidate targets and predicts them from the user's
  other ratings, earlier *and later* ones: the last ``history_length`` of what is left.
  This is the shape of the held-out-users protocol (DESIGN §6: a random 20% of a user's
  positives predicted from the other 80%), and it gives up the causal rule above on
  purpose; a hidden rating is never in its own row's window, and each user's last rating
  is still never a target nor an input (the temporal protocol predicts it).

Cost is bounded: each epoch draws at most ``examples_per_user`` targets per user, chunk
by chunk (``users_per_chunk`` users read from Parquet at a time), so memory holds one
chunk of histories and its examples, never every prefix of the corpus.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from recsys import io
from recsys.config import ModelConfig, TrainConfig, check_model_and_train
from recsys.csr import ranges as _ranges
from recsys.features.splits import ROLES
from recsys.model.inputs import PAD, MovieCatalog, UserChunk, windows

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = (ROLES.index(r) for r in ("train", "validation", "test"))
UNKNOWN_ROLE = -1


class Splits:
    """The preprocess split assignment as sorted numpy arrays, looked up by user id."""

    def __init__(self, table: pa.Table, catalog: MovieCatalog) -> None:
        table = table.sort_by("user_id")
        self.user_ids = table.column("user_id").to_numpy().astype(np.int64)
        roles = table.column("role").to_pylist()
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"splits table has unknown roles {unknown}; expected {ROLES}")
        self.roles = np.array([ROLES.index(r) for r in roles], np.int8)
        hold = table.column("holdout_movie_ids").combine_chunks()
        self.holdout_offsets = hold.offsets.to_numpy().astype(np.int64)
        self.holdout_offsets -= self.holdout_offsets[0]
        values = hold.values.to_numpy(zero_copy_only=False)
        self.holdout = catalog.index_of(values[: self.holdout_offsets[-1]])

    def position(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user in this table, -1 when absent."""
        pos = np.searchsorted(self.user_ids, user_ids)
        pos = np.minimum(pos, max(self.user_ids.size - 1, 0))
        found = self.user_ids.size > 0 and (self.user_ids[pos] == user_ids)
        return np.where(found, pos, -1)

    def roles_of(self, user_ids: np.ndarray) -> np.ndarray:
        pos = self.position(user_ids)
        return np.where(pos >= 0, self.roles[np.maximum(pos, 0)], UNKNOWN_ROLE).astype(np.int8)

    def holdout_mask(self, chunk: UserChunk) -> np.ndarray:
        """Flat mask over ``chunk``: True where the rating is in its user's hold-out set."""
        pos = self.position(chunk.user_ids)
        owners = chunk.owners()
        mask = np.zeros(chunk.movies.size, bool)
        has = pos >= 0
        lo = np.where(has, self.holdout_offsets[np.maximum(pos, 0)], 0)
        hi = np.where(has, self.holdout_offsets[np.maximum(pos, 0) + 1], 0)
        n_hold = hi - lo
        if n_hold.sum() == 0:
            return mask
        hold_owner = np.repeat(np.arange(pos.size), n_hold)
        hold_movie = self.holdout[_ranges(lo, n_hold)]
        key_hold = hold_owner.astype(np.int64) << 32 | hold_movie.astype(np.int64)
        key_all = owners.astype(np.int64) << 32 | chunk.movies.astype(np.int64)
        return np.isin(key_all, key_hold) & (chunk.movies != PAD)


def compact(chunk: UserChunk, keep: np.ndarray) -> UserChunk:
    """The chunk with only the flat ratings where ``keep`` is True (users kept, maybe empty)."""
    counts = np.bincount(chunk.owners()[keep], minlength=chunk.user_ids.size)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return UserChunk(chunk.user_ids, offsets, chunk.movies[keep], chunk.ratings[keep])


def target_candidates(chunk: UserChunk, roles: np.ndarray, splits: Splits,
                      kind: str, min_target_rating: float) -> np.ndarray:
    """Flat mask of the ratings that may be training targets (see the module docstring)."""
    owners = chunk.owners()
    pos_in_user = np.arange(chunk.movies.size) - chunk.offsets[:-1][owners]
    n = chunk.lengths[owners]
    role = roles[owners]
    ok = (chunk.movies != PAD) & (chunk.ratings >= min_target_rating)
    train_user = role == TRAIN
    if kind == "history":
        return ok & train_user & (pos_in_user >= 1) & (pos_in_user < n - 1)
    held = (role == VALIDATION) | (role == TEST)
    return ok & ((train_user & (pos_in_user < n - 1)) | (held & ~splits.holdout_mask(chunk)))


def sample_per_user(owners: np.ndarray, candidates: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Flat positions of at most ``k`` candidates per owner, drawn without replacement."""
    pos = np.flatnonzero(candidates)
    if pos.size == 0:
        return pos
    own = owners[pos]
    order = np.lexsort((rng.random(pos.size), own))
    pos, own = pos[order], own[order]
    first = np.searchsorted(own, own, side="left")
    rank = np.arange(pos.size) - first
    return np.sort(pos[rank < k])


@dataclass
class CorpusScan:
    """What one pass over the histories tells the trainer before the first epoch."""

    #: Targets per epoch (exact unless windows are capped per user; then an upper bound).
    examples_per_epoch: int
    #: Batch rows per epoch: history windows (history model) or user groups (mf).
    rows_per_epoch: int
    train_users: int
    #: Target-candidate count per model index (log-Q sampling probabilities).
    target_counts: np.ndarray
    #: Ratings per model index by training users (ids of rarer movies share one embedding;
    #: the most-popular baseline ranks by it).
    train_counts: np.ndarray


class ExampleStream:
    """Epochs of shuffled, batched training examples read chunk by chunk from Parquet."""

    def __init__(self, histories_uri: str, catalog: MovieCatalog, splits: Splits, *,
                 model: ModelConfig, train: TrainConfig) -> None:
        check_model_and_train(model, train)
        self.parts = io.parquet_parts(histories_uri)
        self.catalog = catalog
        self.splits = splits
        self.model = model
        self.train = train
        #: Targets handed out by :meth:`epoch` so far (for throughput figures).
        self.examples_drawn = 0

    def chunks(self, parts: list[str] | None = None) -> Iterator[UserChunk]:
        """The histories as :class:`UserChunk` s, in ``parts`` order (all parts by default)."""
        parts = self.parts if parts is None else parts
        for part in parts:
            for batch in io.iter_parquet(part, ["user_id", "movie_ids", "ratings"],
                                         self.train.users_per_chunk):
                yield UserChunk.from_batch(batch, self.catalog)

    def _groups(self, chunk: UserChunk, roles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate target positions, their owners and (history) their window index.

        Windows tile a user's ratings from the end: window ``w`` ends at the target index
        ``e = n - 2 - w * L`` and predicts targets ``e - L + 1 .. e``.
        """
        owners = chunk.owners()
        cand = target_candidates(chunk, roles, self.splits, self.model.kind,
                                 self.train.min_target_rating)
        pos = np.flatnonzero(cand)
        own = owners[pos]
        if self.model.kind == "history":
            in_user = pos - chunk.offsets[:-1][own]
            window = (chunk.lengths[own] - 2 - in_user) // self.model.history_length
        else:
            window = np.zeros(pos.size, np.int64)
        return pos, own, window

    def scan(self) -> CorpusScan:
        n_index = self.catalog.size + 1
        target_counts = np.zeros(n_index, np.int64)
        train_counts = np.zeros(n_index, np.int64)
        examples = rows = users = 0
        k, cap = self.train.targets_per_window, self.windows_per_user
        for chunk in self.chunks():
            roles = self.splits.roles_of(chunk.user_ids)
            pos, own, window = self._groups(chunk, roles)
            target_counts += np.bincount(chunk.movies[pos], minlength=n_index)
            is_train = roles[chunk.owners()] == TRAIN
            train_counts += np.bincount(chunk.movies[is_train], minlength=n_index)
            users += int((roles == TRAIN).sum())
            if self.train.objective == "held_out_set":
                per_user = np.bincount(own, minlength=chunk.user_ids.size)
                hidden = np.maximum(1, np.rint(self.train.set_holdout_fraction * per_user))
                rows += int((per_user > 0).sum()) * cap
                examples += int(cap * np.minimum(hidden, k)[per_user > 0].sum())
            elif self.model.kind == "history":
                group, per_group = np.unique(own.astype(np.int64) << 32 | window, return_counts=True)
                per_user_groups = np.bincount(group >> 32, minlength=chunk.user_ids.size)
                rows += int(np.minimum(per_user_groups, cap).sum())
                per_user = np.bincount(group >> 32, weights=np.minimum(per_group, k),
                                       minlength=chunk.user_ids.size)
                capped = per_user_groups > cap
                examples += int(np.where(capped, cap * k, per_user).sum())
            else:
                per_user = np.minimum(np.bincount(own, minlength=chunk.user_ids.size),
                                      self.train.examples_per_user)
                rows += int(np.ceil(per_user / k).sum())
                examples += int(per_user.sum())
        target_counts[PAD] = train_counts[PAD] = 0
        return CorpusScan(examples, rows, users, target_counts, train_counts)

    @property
    def windows_per_user(self) -> int:
        return max(1, -(-self.train.examples_per_user // self.train.targets_per_window))

    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        """The mf model's user index: row in the splits table + 1 (0 = unknown user)."""
        return (self.splits.position(user_ids) + 1).astype(np.int32)

    def _set_rows(self, chunk: UserChunk, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``held_out_set`` rows: ``windows_per_user`` rows per training user, each hiding
        its own random set of the user's candidate targets and predicting up to k of them
        from the last ``history_length`` of the user's other ratings (before their last)."""
        k, length = self.train.targets_per_window, self.model.history_length
        copies = self.windows_per_user
        roles = self.splits.roles_of(chunk.user_ids)
        cand = target_candidates(chunk, roles, self.splits, "history",
                                 self.train.min_target_rating)
        users = np.flatnonzero(np.bincount(chunk.owners()[cand], minlength=chunk.user_ids.size))
        row_user = np.repeat(users, copies)
        n_rows = row_user.size
        # a row spans its user's ratings but the last (kept for the temporal protocol)
        span = chunk.lengths[row_user] - 1
        flat = _ranges(chunk.offsets[:-1][row_user], span)
        row_of = np.repeat(np.arange(n_rows), span)
        is_cand = cand[flat]
        draw = rng.random(flat.size)
        hidden = is_cand & (draw < self.train.set_holdout_fraction)
        # every row hides at least one target: its candidate with the smallest draw
        row_start = np.concatenate([[0], np.cumsum(span)[:-1]]).astype(np.int64)
        order = np.lexsort((np.where(is_cand, draw, 2.0), row_of))
        none = np.bincount(row_of[hidden], minlength=n_rows) == 0
        hidden[order[row_start[none]]] = True
        # targets: up to k hidden ratings per row, in random order
        keep = sample_per_user(row_of, hidden, k, rng)
        target, mask, _ = pack_targets(row_of[keep], chunk.movies[flat[keep]], n_rows, k)
        # window: the last `length` of the row's other ratings, in time order (the first
        # rating is never a candidate, so no window is empty)
        shown = flat[~hidden]
        ends = np.cumsum(np.bincount(row_of[~hidden], minlength=n_rows))
        starts = np.concatenate([[0], ends[:-1]])
        m, r = windows(chunk.movies[shown], chunk.ratings[shown], starts, ends, length)
        return {"target": target, "target_mask": mask, "history_movies": m,
                "history_ratings": r, "target_column": np.full((n_rows, k), length - 1, np.int32)}

    def _rows(self, chunk: UserChunk, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One epoch's rows of a chunk: a history window (or a user) and up to k targets."""
        if self.train.objective == "held_out_set":
            return self._set_rows(chunk, rng)
        k, length = self.train.targets_per_window, self.model.history_length
        roles = self.splits.roles_of(chunk.user_ids)
        pos, own, window = self._groups(chunk, roles)
        if self.model.kind == "history":
            group_key, group = np.unique(own.astype(np.int64) << 32 | window, return_inverse=True)
            chosen = np.zeros(group_key.size, bool)
            chosen[sample_per_user(group_key >> 32, np.ones(group_key.size, bool),
                                   self.windows_per_user, rng)] = True
            keep = sample_per_user(group, chosen[group], k, rng)
        else:
            keep = sample_per_user(own, np.ones(pos.size, bool), self.train.examples_per_user, rng)
            rank = np.arange(keep.size) - np.searchsorted(own[keep], own[keep])
            group_key, group = np.unique(own[keep].astype(np.int64) << 32 | rank // k,
                                         return_inverse=True)
            pos, own, window = pos[keep], own[keep], window[keep]
            keep = np.arange(pos.size)
        # rows are the groups that kept a target; order the kept targets by group
        keep = keep[np.argsort(group[keep], kind="stable")]
        pos, own, window, group = pos[keep], own[keep], window[keep], group[keep]
        rows, row_of = np.unique(group, return_inverse=True)
        n_rows = rows.size
        target, mask, slot = pack_targets(row_of, chunk.movies[pos], n_rows, k)
        row_user = (group_key[rows] >> 32).astype(np.int64)
        out = {"target": target, "target_mask": mask}
        if self.model.kind == "history":
            starts = chunk.offsets[:-1][row_user]
            end_in_user = chunk.lengths[row_user] - 2 - (group_key[rows] & 0xFFFFFFFF) * length
            m, r = windows(chunk.movies, chunk.ratings, starts, starts + end_in_user, length)
            col = np.zeros((n_rows, k), np.int32)
            col[row_of, slot] = pos - starts[row_of] - end_in_user[row_of] + length - 1
            out.update(history_movies=m, history_ratings=r, target_column=col)
        else:
            out["user_index"] = self.user_index(chunk.user_ids)[row_user]
        return out

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` rows (the last one may be smaller), shuffled per chunk."""
        rng = np.random.default_rng([self.train.seed, epoch])
        parts = [self.parts[i] for i in rng.permutation(len(self.parts))]
        size = self.train.batch_size
        carry: dict[str, np.ndarray] | None = None
        for chunk in self.chunks(parts):
            ex = self._rows(chunk, rng)
            self.examples_drawn += int(ex["target_mask"].sum())
            order = rng.permutation(ex["target"].shape[0])
            ex = {k: v[order] for k, v in ex.items()}
            if carry is not None:
                ex = {k: np.concatenate([carry[k], v]) for k, v in ex.items()}
            n = ex["target"].shape[0]
            full = n - n % size
            for start in range(0, full, size):
                yield {k: v[start:start + size] for k, v in ex.items()}
            carry = {k: v[full:] for k, v in ex.items()}
        if carry is not None and carry["target"].shape[0]:
            yield carry


def pack_targets(row_of: np.ndarray, movies: np.ndarray, n_rows: int, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[n_rows, k]`` target movies and mask from targets sorted by row (at most k per
    row), and each target's slot in its row."""
    slot = np.arange(row_of.size) - np.searchsorted(row_of, row_of)
    target = np.zeros((n_rows, k), np.int32)
    mask = np.zeros((n_rows, k), bool)
    target[row_of, slot] = movies
    mask[row_of, slot] = True
    return target, mask, slot


@dataclass
class HeldOutUsers:
    """Users of one held-out role: their input ratings and the hold-out set to find."""

    inputs: UserChunk  # hold-out ratings removed; time order kept
    truth: tuple[np.ndarray, np.ndarray]  # CSR of hold-out model indices

    @property
    def user_ids(self) -> np.ndarray:
        return self.inputs.user_ids


def concat_chunks(chunks: list[UserChunk]) -> UserChunk:
    if not chunks:
        return UserChunk(np.zeros(0, np.int64), np.zeros(1, np.int64),
                         np.zeros(0, np.int32), np.zeros(0, np.float32))
    lengths = np.concatenate([c.lengths for c in chunks])
    return UserChunk(
        np.concatenate([c.user_ids for c in chunks]),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.concatenate([c.movies for c in chunks]),
        np.concatenate([c.ratings for c in chunks]),
    )


def held_out_users(stream: ExampleStream, role: int) -> HeldOutUsers:
    """Read the users of ``role`` (VALIDATION or TEST) with their hold-out split applied."""
    picked = []
    splits = stream.splits
    for chunk in stream.chunks():
        mine = splits.roles_of(chunk.user_ids) == role
        if not mine.any():
            continue
        keep_rating = mine[chunk.owners()] & ~splits.holdout_mask(chunk)
        sub = compact(chunk, keep_rating)
        users = np.flatnonzero(mine)
        starts, ends = sub.offsets[users], sub.offsets[users + 1]
        idx = _ranges(starts, ends - starts)
        picked.append(UserChunk(sub.user_ids[users],
                                np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64),
                                sub.movies[idx], sub.ratings[idx]))
    inputs = concat_chunks(picked)
    pos = splits.position(inputs.user_ids)
    lo, hi = splits.holdout_offsets[pos], splits.holdout_offsets[pos + 1]
    values = splits.holdout[_ranges(lo, hi - lo)]
    owner = np.repeat(np.arange(pos.size), hi - lo)
    known = values != PAD
    counts = np.bincount(owner[known], minlength=pos.size)
    truth = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values[known].astype(np.int64))
    return HeldOutUsers(inputs, truth)
