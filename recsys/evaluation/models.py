"""The models an evaluation compares, behind one small interface.

A scorer is fitted on a protocol's ``fit`` interactions and returns dense scores
``[users, movies]`` for a slice of the protocol's ``query`` users (higher is better;
``-inf`` = never recommend). Exact ranking, exclusion and metrics are done by the caller.

* :class:`MostPopular` — fit counts.
* :class:`Ease` — Steck 2019, closed form ``B = I - P diag(1/diag P)`` with
  ``P = (XᵀX + λI)⁻¹`` on binary interactions; only for catalogs that fit in memory.
* :class:`AlsScorer` — Spark MLlib ALS fitted on ``fit`` (:class:`AlsFit`); query users
  it never saw are folded in (item factors fixed), as in Liang et al. 2018.
* :class:`TwoTower` — the exported user tower on each query user's input history, dot
  product with the movie embeddings of the same train run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recsys.evaluation.metrics import most_popular_scores
from recsys.evaluation.protocols import Interactions, columns_of, positions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.evaluation.als import AlsSettings


class MostPopular:
    name = "most-popular"

    def __init__(self, fit: Interactions, n_movies: int) -> None:
        self._score = most_popular_scores(np.bincount(fit.columns, minlength=n_movies))

    def scores(self, query: Interactions, rows: slice) -> np.ndarray:
        return self._score(rows)


def _binary(inter: Interactions, n_movies: int, rows: slice | None = None) -> np.ndarray:
    rows = rows or slice(0, inter.users)
    lo, hi = inter.offsets[rows.start], inter.offsets[rows.stop]
    x = np.zeros((rows.stop - rows.start, n_movies), np.float32)
    owner = np.repeat(np.arange(rows.stop - rows.start),
                      np.diff(inter.offsets[rows.start:rows.stop + 1]))
    x[owner, inter.columns[lo:hi]] = 1.0
    return x


class Ease:
    name = "EASE"

    def __init__(self, fit: Interactions, n_movies: int, *, l2: float = 500.0,
                 max_movies: int = 20_000, min_count: int = 1) -> None:
        if n_movies > max_movies:
            raise ValueError(f"EASE needs a dense {n_movies}x{n_movies} matrix; this catalog "
                             f"is over evaluate.ease_max_movies = {max_movies}")
        self.l2 = l2
        self.n_movies = n_movies
        counts = np.bincount(fit.columns, minlength=n_movies)
        self.kept = np.flatnonzero(counts >= max(min_count, 1))
        x = _binary(fit, n_movies)[:, self.kept]
        gram = x.T @ x  # float32: half the time of float64, ample with l2 ~ 100s
        gram[np.diag_indices(self.kept.size)] += l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))[None, :]
        b[np.diag_indices(self.kept.size)] = 0.0
        self.b = b.astype(np.float32, copy=False)

    def scores(self, query: Interactions, rows: slice) -> np.ndarray:
        out = np.full((rows.stop - rows.start, self.n_movies), -np.inf, np.float32)
        out[:, self.kept] = _binary(query, self.n_movies, rows)[:, self.kept] @ self.b
        return out


class AlsFit:
    """Spark MLlib ALS fitted on ``fit``, its factors taken to numpy by catalog column."""

    def __init__(self, spark: "SparkSession", fit: Interactions, catalog: np.ndarray,
                 settings: "AlsSettings") -> None:
        from recsys.evaluation.als import fit_als

        self.settings = settings
        self.fit = fit
        df = spark.createDataFrame(
            _frame(fit, catalog), "user_id long, movie_id long, rating float")
        model = fit_als(df, settings)
        users = model.userFactors.toPandas()
        items = model.itemFactors.toPandas()
        self.items = np.zeros((catalog.size, settings.rank), np.float32)
        self.known_item = np.zeros(catalog.size, bool)
        if len(items):
            cols = columns_of(catalog, items["id"].to_numpy(np.int64))
            self.items[cols] = np.stack(items["features"].to_numpy()).astype(np.float32)
            self.known_item[cols] = True
        ids = users["id"].to_numpy(np.int64)
        order = np.argsort(ids)
        self.user_ids = ids[order]
        self.user_factors = (np.stack(users["features"].to_numpy())[order].astype(np.float32)
                             if len(users) else np.zeros((0, settings.rank), np.float32))


class AlsScorer:
    """ALS scores for ``query``: a user the model was fitted on keeps their factors; a
    user it never saw (the held-out protocol's) is folded in from their input ratings with
    the item factors fixed (:func:`recsys.evaluation.als.fold_in`), so the held-out users
    stay out of training for ALS as for every other model."""

    name = "ALS"

    def __init__(self, model: AlsFit, query: Interactions) -> None:
        from recsys.evaluation.als import fold_in

        self.model = model
        pos, seen = positions(model.user_ids, query.user_ids)
        self.query_factors = np.zeros((query.users, model.settings.rank), np.float32)
        self.query_factors[seen] = model.user_factors[pos[seen]]
        self.folded_in = int(np.count_nonzero(~seen))
        if self.folded_in:
            new = query.subset(np.flatnonzero(~seen), model.known_item[query.columns])
            self.query_factors[~seen] = fold_in(model.items, new.offsets, new.columns,
                                                new.ratings, model.settings)

    def scores(self, query: Interactions, rows: slice) -> np.ndarray:
        s = self.query_factors[rows] @ self.model.items.T
        s[:, ~self.model.known_item] = -np.inf
        return s


def _frame(inter: Interactions, catalog: np.ndarray):
    import pandas as pd

    return pd.DataFrame({"user_id": inter.user_ids[inter.owners()],
                         "movie_id": catalog[inter.columns],
                         "rating": inter.ratings.astype(np.float32)})


def require_history_model(kind: str, run: str) -> None:
    """The evaluation embeds held-out users from their histories: only a ``history`` model
    can (an ``mf`` model has one embedding per training user)."""
    if kind != "history":
        from recsys.artifacts import ArtifactError

        raise ArtifactError(
            f"train run {run} is a '{kind}' model (one embedding per training user): the "
            "evaluation embeds its held-out users from their histories, which only a "
            "'history' model can do; evaluate a model.kind = \"history\" run (--train-run)")


class TwoTower:
    name = "two-tower"

    def __init__(self, train_dir: str, catalog: np.ndarray, workdir: str) -> None:
        from recsys import io
        from recsys.index.build import read_movie_embeddings
        from recsys.model.serving import embed_histories, load_user_tower

        self._embed = embed_histories
        self.tower = load_user_tower(io.local_copy(train_dir, workdir))
        require_history_model(self.tower.kind, train_dir)
        emb, ids = read_movie_embeddings(train_dir)
        self.items = np.zeros((catalog.size, emb.shape[1]), np.float32)
        self.known = np.zeros(catalog.size, bool)
        inside = np.isin(ids, catalog)
        cols = columns_of(catalog, ids[inside])
        self.items[cols] = emb[inside]
        self.known[cols] = True
        self.catalog = catalog
        self._cache: tuple[Interactions, np.ndarray] | None = None

    def user_embeddings(self, query: Interactions) -> np.ndarray:
        """Every query user's embedding, computed once per query set (scores() is called
        slice by slice)."""
        if self._cache is None or self._cache[0] is not query:
            emb = self._embed(self.tower, query.user_ids, self.catalog[query.columns],
                              query.ratings, query.offsets)
            self._cache = (query, emb)
        return self._cache[1]

    def scores(self, query: Interactions, rows: slice) -> np.ndarray:
        s = self.user_embeddings(query)[rows] @ self.items.T
        s[:, ~self.known] = -np.inf
        return s
