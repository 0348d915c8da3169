"""The evaluation protocols of DESIGN §6, built from one preprocess run.

Everything is in catalog *columns*: movie ``j`` of the sorted movie table is column ``j``.
Per-user data are CSR (``offsets``, flat arrays), users in ``user_id`` order, each user's
ratings in time order.

* :func:`held_out_users` — strong generalization (Liang et al. 2018): the users of one role
  (``validation`` to tune, ``test`` to report) are never fitted on; each gives the input
  part of their history and must find their hold-out positives. Seen movies excluded.
* :func:`temporal` — each training user's last rating is the target, everything before it
  the input (the model never trained on last ratings). HR@10 / NDCG@10, seen excluded.
* :func:`random_split` — 80/20 random split of the training users' ratings, as in the
  TFRS tutorial; top-K categorical accuracy over all movies, nothing excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys import io
from recsys.csr import list_column, ranges
from recsys.model.examples import ROLES, TEST, TRAIN, VALIDATION

__all__ = ["ROLES", "TEST", "TRAIN", "VALIDATION", "Corpus", "Interactions", "Protocol",
           "held_out_users", "load_corpus", "random_split", "temporal"]


@dataclass(frozen=True)
class Interactions:
    """Users' rated movies as CSR: ``columns[offsets[u]:offsets[u+1]]`` in time order."""

    user_ids: np.ndarray  # int64 [U] raw ids
    offsets: np.ndarray  # int64 [U+1]
    columns: np.ndarray  # int64 catalog columns
    ratings: np.ndarray  # float32

    @property
    def users(self) -> int:
        return int(self.user_ids.size)

    def owners(self) -> np.ndarray:
        return np.repeat(np.arange(self.users), np.diff(self.offsets))

    def subset(self, users: np.ndarray, keep: np.ndarray | None = None) -> "Interactions":
        """Rows ``users`` (positions); of their ratings only those where ``keep`` (flat mask)."""
        mask = np.zeros(self.columns.size, bool)
        mask[ranges(self.offsets[users], np.diff(self.offsets)[users])] = True
        if keep is not None:
            mask &= keep
        owner = self.owners()
        picked = np.flatnonzero(mask)
        position = np.full(self.users, -1, np.int64)
        position[users] = np.arange(users.size)
        counts = np.bincount(position[owner[picked]], minlength=users.size)
        return Interactions(self.user_ids[users],
                            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                            self.columns[picked], self.ratings[picked])

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        return self.offsets, self.columns

    def same(self, other: "Interactions") -> bool:
        """The same users with the same ratings (e.g. two protocols' training users)."""
        return all(np.array_equal(getattr(self, f), getattr(other, f))
                   for f in ("user_ids", "offsets", "columns", "ratings"))


@dataclass(frozen=True)
class Corpus:
    """What the protocols are cut from: every user's history, roles and hold-out sets."""

    movie_ids: np.ndarray  # int64 [M], sorted raw movie ids = the catalog columns
    genres: list[str]  # primary genre per column (for plots)
    history: Interactions
    roles: np.ndarray  # int8 per user
    holdout: np.ndarray  # bool per flat rating: in its user's hold-out set

    @property
    def n_movies(self) -> int:
        return int(self.movie_ids.size)

    def column_of(self, movie_ids: np.ndarray) -> np.ndarray:
        return columns_of(self.movie_ids, movie_ids)


def positions(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each of ``ids`` in the sorted array ``sorted_ids``; a position
    is meaningful only where found."""
    ids = np.asarray(ids)
    if sorted_ids.size == 0:
        return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1).astype(np.int64)
    return pos, sorted_ids[pos] == ids


def columns_of(catalog: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Column of each raw movie id in the sorted ``catalog``; unknown ids are an error."""
    pos, found = positions(catalog, movie_ids)
    if catalog.size == 0 or not found.all():
        missing = np.asarray(movie_ids)[~found][:5]
        raise ValueError(f"movie ids {missing.tolist()} are not in the movie table")
    return pos


def load_corpus(preprocess_dir: str) -> Corpus:
    """Histories, splits and movies of a preprocess run, as a :class:`Corpus`."""
    movies = io.read_parquet(io.join(preprocess_dir, "movies"), columns=["movie_id", "genres"])
    movies = movies.sort_by("movie_id")
    movie_ids = movies.column("movie_id").to_numpy().astype(np.int64)
    genres = [g[0] if g else "(none)" for g in movies.column("genres").to_pylist()]
    hist = io.read_parquet(io.join(preprocess_dir, "histories"),
                           columns=["user_id", "movie_ids", "ratings"]).sort_by("user_id")
    splits = io.read_parquet(io.join(preprocess_dir, "splits"),
                             columns=["user_id", "role", "holdout_movie_ids"]).sort_by("user_id")
    user_ids = hist.column("user_id").to_numpy().astype(np.int64)
    if not np.array_equal(user_ids, splits.column("user_id").to_numpy().astype(np.int64)):
        raise ValueError(f"{preprocess_dir}: histories and splits do not hold the same users")
    offsets, flat_m = list_column(hist.column("movie_ids"))
    _, flat_r = list_column(hist.column("ratings"))
    history = Interactions(user_ids, offsets, columns_of(movie_ids, flat_m.astype(np.int64)),
                           flat_r.astype(np.float32))
    roles = np.array([ROLES.index(x) for x in splits.column("role").to_pylist()], np.int8)
    h_off, h_val = list_column(splits.column("holdout_movie_ids"))
    h_owner = np.repeat(np.arange(user_ids.size), np.diff(h_off))
    key_hold = h_owner << 32 | columns_of(movie_ids, h_val.astype(np.int64))
    key_all = history.owners().astype(np.int64) << 32 | history.columns
    holdout = np.isin(key_all, key_hold)
    return Corpus(movie_ids, genres, history, roles, holdout)


@dataclass(frozen=True)
class Protocol:
    """One evaluation task: fit baselines on ``fit``, score ``query`` users, compare the
    ranking with ``truth`` (seen movies excluded when ``exclude_seen``)."""

    name: str
    fit: Interactions
    query: Interactions
    truth: tuple[np.ndarray, np.ndarray]  # CSR of columns per query user
    exclude_seen: bool
    description: str


def _last_mask(inter: Interactions) -> np.ndarray:
    mask = np.zeros(inter.columns.size, bool)
    ends = inter.offsets[1:][np.diff(inter.offsets) > 0] - 1
    mask[ends] = True
    return mask


def held_out_users(corpus: Corpus, role: int = TEST) -> Protocol:
    h = corpus.history
    train_users = np.flatnonzero(corpus.roles == TRAIN)
    users = np.flatnonzero(corpus.roles == role)
    query = h.subset(users, ~corpus.holdout)
    truth = h.subset(users, corpus.holdout)
    return Protocol(
        f"held-out users ({ROLES[role]})", h.subset(train_users), query, truth.csr(), True,
        f"{users.size} {ROLES[role]} users never fitted on; input = their history minus a "
        f"random 20% of their positives (ratings >= 4), which they must find; seen excluded")


def temporal(corpus: Corpus) -> Protocol:
    h = corpus.history
    users = np.flatnonzero((corpus.roles == TRAIN) & (np.diff(h.offsets) >= 2))
    last = _last_mask(h)
    return Protocol(
        "temporal next-item", h.subset(users, ~last), h.subset(users, ~last),
        h.subset(users, last).csr(), True,
        f"{users.size} training users: the last rating (by time) is the target, everything "
        "before it the input; full catalog, seen excluded")


def random_split(corpus: Corpus, *, seed: int = 42, test_fraction: float = 0.2) -> Protocol:
    h = corpus.history
    users = np.flatnonzero(corpus.roles == TRAIN)
    rng = np.random.default_rng(seed)
    test = rng.random(h.columns.size) < test_fraction
    fit = h.subset(users, ~test)
    truth = h.subset(users, test)
    keep = np.flatnonzero(np.diff(fit.offsets) > 0)  # a user needs an input history
    return Protocol(
        "random split", fit, fit.subset(keep), truth.subset(keep).csr(), False,
        f"{keep.size} training users, {int(test_fraction * 100)}% of their ratings at random "
        "are the test set; top-K categorical accuracy over all movies, nothing excluded")
