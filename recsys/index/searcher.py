"""Nearest-movie searchers over the movie embeddings (DESIGN §4.3), on ScaNN's pybind API.

Two kinds, one interface (:class:`MovieSearcher`):

* ``exact`` — ScaNN brute force in float32: the ground truth, and what scoring falls back
  to when a search must go deeper than the approximate index is tuned for.
* ``scann`` — tree partitioning with exact scoring in the searched leaves (catalogs up to
  :data:`TREE_ABOVE` movies), or asymmetric hashing + exact re-ordering of the best
  candidates, with settings sized to the catalog (:func:`scann_settings`) and tuned on
  real users by the index build (:func:`tune_search`).

A searcher is built on the driver, ``save()``-d to a directory (ScaNN's own
``serialize()`` plus the movie ids), and ``load()``-ed on each worker. The plain pybind
API needs no TensorFlow, so Spark Python workers load it cheaply (see :func:`_scann`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.config import INDEX_SCORING as SCORING

INFO = "searcher.json"
MOVIE_IDS = "movie_ids.npy"


def _scann():
    """``scann.scann_ops.py.scann_ops_pybind``, without importing TensorFlow if possible.

    The ``scann`` package's ``__init__`` imports TensorFlow for ScaNN's TensorFlow ops,
    which this project does not use: 4.4–5.1 s and about 600 MB in every Spark Python
    worker, against 0.15 s and 34 MB for the pybind module alone (measured on this
    project's 2-core machine). When ``scann`` is not imported yet, the pybind module is
    imported under a stand-in for the package that does not run that ``__init__``; the
    stand-in is then removed, so a later ``import scann`` anywhere gets the real package.
    """
    try:
        if "scann" not in sys.modules:
            spec = importlib.util.find_spec("scann")
            if spec is not None and spec.submodule_search_locations:
                sys.modules["scann"] = importlib.util.module_from_spec(spec)
                try:
                    return importlib.import_module("scann.scann_ops.py.scann_ops_pybind")
                finally:
                    del sys.modules["scann"]
        from scann import scann_ops_pybind
    except ImportError as exc:  # pragma: no cover - the package pins scann
        raise ImportError(
            f"ScaNN is not importable ({exc}); install the pinned set with "
            "`pip install -e .` (scann==1.4.2 needs tensorflow~=2.20.0)"
        ) from None
    return scann_ops_pybind


@dataclass(frozen=True)
class ScannSettings:
    num_leaves: int
    leaves_to_search: int
    training_sample_size: int
    dims_per_block: int
    anisotropic_threshold: float
    #: Candidates re-ordered exactly (``ah`` only; 0 for ``brute``).
    reorder: int
    #: ``brute``: float32 dot products with every movie of the searched leaves (a tree
    #: partitions the catalog; nothing to re-order); ``ah``: asymmetric hashing, then the
    #: best ``reorder`` candidates re-scored exactly.
    scoring: str = "ah"
    #: SOAR (ScaNN's spilling with orthogonality-amplified residuals): each movie is also
    #: put in a second leaf, chosen so that the two leaves' errors are unlikely to miss
    #: the same query; its lambda, 0 for one leaf per movie. Only with a tree.
    spill_lambda: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: Up to this many movies the searcher is a tree of about 2 sqrt(n) leaves with exact
#: (float32) scoring in the leaves it searches; above it, asymmetric hashing in the
#: leaves of about sqrt(n) and exact re-ordering. Measured on the full-scale corpus
#: (62,423 movies, trained 64-d embeddings, 8,192 real users, top 256, one core): 500
#: leaves with 60 searched found 0.9948 of the exact top-100 in 0.45-0.51 s; hashing over
#: the whole catalog with 500 re-ordered 0.9966 in 0.87 s, with 1,000 re-ordered 0.9994
#: in 1.17 s; a tree of 500 leaves (60 searched) with hashing and 512 re-ordered 0.9942 in
#: 0.79 s; exact search over every movie took 1.21 s.
TREE_ABOVE = 250_000

#: SOAR's lambda for trees (ScaNN's ``soar_lambda``). Measured on the full-scale corpus
#: (500 leaves, 2,000 real users, recall@100, three builds each): without spilling,
#: 63 leaves searched gave 0.9916-0.9957 and one build of four needed all 500 to reach
#: 0.995; with lambda 1.5, 16 leaves gave 0.9961-0.9964 and 24 leaves 0.9987-0.9989.
SPILL_LAMBDA = 1.5


def scann_settings(n_movies: int, num_neighbors: int, *, scoring: str = "auto",
                   leaves: int = 0, leaves_to_search: int = 0, reorder: int = 0,
                   dims_per_block: int = 2, anisotropic_threshold: float = 0.2,
                   spill_lambda: float = SPILL_LAMBDA) -> ScannSettings:
    """Settings sized to the catalog; any value given (> 0) wins over the sizing rule.

    ``scoring="auto"``: ``brute`` up to :data:`TREE_ABOVE` movies, else ``ah``.
    ``brute``: about 2 sqrt(n) leaves, each movie in two of them (SOAR,
    ``spill_lambda``), a 32nd of the leaves searched (an 8th without spilling). ``ah``: up
    to :data:`TREE_ABOVE` movies no tree (every movie hashed), above it about sqrt(n)
    leaves, half of them searched; 10x ``num_neighbors`` re-ordered. Leaves hold at least
    50 movies. The index build tunes the leaves searched (``brute``) or the re-order count
    (``ah``) when they are not given (:func:`tune_search`).
    """
    if scoring not in SCORING:
        raise ValueError(f"index scoring must be one of {SCORING}, got {scoring!r}")
    if scoring == "auto":
        scoring = "brute" if n_movies <= TREE_ABOVE else "ah"
    if leaves <= 0:
        if scoring == "brute":
            leaves = int(round(2 * math.sqrt(n_movies)))
        else:
            leaves = 1 if n_movies <= TREE_ABOVE else int(round(math.sqrt(n_movies)))
    leaves = max(1, min(leaves, n_movies // 50 or 1))
    spill_lambda = max(0.0, float(spill_lambda)) if leaves > 1 else 0.0
    if leaves_to_search <= 0:
        share = (32 if spill_lambda else 8) if scoring == "brute" else 2
        leaves_to_search = max(1, int(math.ceil(leaves / share)))
    leaves_to_search = min(leaves_to_search, leaves)
    if scoring == "brute":
        reorder = 0
    else:
        reorder = max(reorder if reorder > 0 else 10 * num_neighbors, num_neighbors)
    return ScannSettings(leaves, leaves_to_search, min(n_movies, 100_000), dims_per_block,
                         anisotropic_threshold, reorder, scoring, spill_lambda)


class MovieSearcher:
    """Top-k movies by dot product for batches of user embeddings."""

    def __init__(self, searcher: Any, movie_ids: np.ndarray, info: dict[str, Any]) -> None:
        self._searcher = searcher
        self.movie_ids = np.asarray(movie_ids, np.int64)
        self.info = info

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def scoring(self) -> str:
        """``brute`` or ``ah`` for a ``scann`` searcher (searchers saved before the
        setting existed hashed)."""
        return self.info.get("settings", {}).get("scoring", "ah")

    @property
    def size(self) -> int:
        return int(self.movie_ids.size)

    @classmethod
    def build(cls, embeddings: np.ndarray, movie_ids: np.ndarray, *, kind: str,
              num_neighbors: int = 100, settings: ScannSettings | None = None,
              info: dict[str, Any] | None = None) -> "MovieSearcher":
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(movie_ids):
            raise ValueError(
                f"embeddings {emb.shape} do not match {len(movie_ids)} movie ids")
        if not np.all(np.isfinite(emb)):
            raise ValueError("movie embeddings contain NaN or infinite values")
        k = min(num_neighbors, emb.shape[0])
        builder = _scann().builder(emb, k, "dot_product")
        record = {"kind": kind, "num_neighbors": k, "movies": int(emb.shape[0]),
                  "dim": int(emb.shape[1]), **(info or {})}
        if kind == "exact":
            searcher = builder.score_brute_force().build()
        elif kind == "scann":
            s = settings or scann_settings(emb.shape[0], k)
            b = builder
            if s.num_leaves > 1:
                spill = {"soar_lambda": s.spill_lambda} if s.spill_lambda > 0 else {}
                b = b.tree(num_leaves=s.num_leaves, num_leaves_to_search=s.leaves_to_search,
                           training_sample_size=s.training_sample_size, **spill)
            if s.scoring == "brute":
                searcher = b.score_brute_force().build()
            else:
                searcher = b.score_ah(s.dims_per_block,
                                      anisotropic_quantization_threshold=s.anisotropic_threshold
                                      ).reorder(s.reorder).build()
            record["settings"] = s.to_dict()
        else:
            raise ValueError(f"searcher kind must be 'exact' or 'scann', got {kind!r}")
        return cls(searcher, np.asarray(movie_ids), record)

    def search(self, queries: np.ndarray, k: int, *, reorder: int | None = None,
               leaves_to_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(movie ids [B, k], scores [B, k]) best first; k is capped at the catalog size.

        A ``scann`` searcher with a tree searches ``leaves_to_search`` leaves; with
        hashing it re-orders ``max(2k, reorder)`` candidates exactly. Both default to the
        searcher's settings."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.info["dim"]:
            raise ValueError(
                f"queries of shape {q.shape} do not match the index dimension {self.info['dim']}")
        k = min(k, self.size)
        if q.shape[0] == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        options: dict[str, int] = {}
        if self.kind == "scann":
            s = self.info["settings"]
            if self.scoring == "ah":  # deep searches re-order twice what they return
                options["pre_reorder_num_neighbors"] = min(
                    self.size, max(2 * k, reorder or s["reorder"]))
            if s["num_leaves"] > 1:
                options["leaves_to_search"] = min(s["num_leaves"],
                                                  leaves_to_search or s["leaves_to_search"])
        idx, scores = self._searcher.search_batched(q, final_num_neighbors=k, **options)
        idx = np.asarray(idx, np.int64)
        return self.movie_ids[idx], np.asarray(scores, np.float32)

    def with_search(self, **settings: int) -> "MovieSearcher":
        """The same ScaNN searcher with other search-time settings (``reorder``,
        ``leaves_to_search``): nothing is rebuilt."""
        if self.kind != "scann":
            raise ValueError(f"only a 'scann' searcher has search settings, this one is "
                             f"{self.kind!r}")
        unknown = set(settings) - {"reorder", "leaves_to_search"}
        if unknown:
            raise ValueError(f"not search-time settings: {sorted(unknown)}")
        merged = {**self.info["settings"], **{k: int(v) for k, v in settings.items()}}
        return MovieSearcher(self._searcher, self.movie_ids, {**self.info, "settings": merged})

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._searcher.serialize(directory, relative_path=True)
        np.save(os.path.join(directory, MOVIE_IDS), self.movie_ids)
        with open(os.path.join(directory, INFO), "w", encoding="utf-8") as fh:
            json.dump(self.info, fh, indent=2)
            fh.write("\n")

    @classmethod
    def load(cls, directory: str) -> "MovieSearcher":
        info_path = os.path.join(directory, INFO)
        if not os.path.isfile(info_path):
            raise FileNotFoundError(f"no {INFO} in {directory}: not a saved movie searcher")
        with open(info_path, encoding="utf-8") as fh:
            info = json.load(fh)
        searcher = _scann().load_searcher(directory)
        return cls(searcher, np.load(os.path.join(directory, MOVIE_IDS)), info)


#: What :func:`tune_search` tries: leaves searched as shares of the tree (``brute``), or
#: re-order counts as multiples of the neighbours wanted (``ah``).
LEAF_SHARES = (1 / 48, 1 / 32, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 1)
REORDER_MULTIPLES = (3, 5, 10, 20, 40)


def search_ladder(searcher: MovieSearcher, k: int) -> tuple[str, list[int]]:
    """(setting, increasing values) that :func:`tune_search` tries for this searcher."""
    if searcher.scoring == "brute":
        leaves = searcher.info["settings"]["num_leaves"]
        return "leaves_to_search", sorted({max(1, int(math.ceil(share * leaves)))
                                           for share in LEAF_SHARES})
    return "reorder", sorted({min(searcher.size, m * k) for m in REORDER_MULTIPLES})


def tune_search(searcher: MovieSearcher, queries: np.ndarray, truth: np.ndarray, *,
                target: float) -> tuple[str, int, dict[int, float]]:
    """The cheapest search setting whose recall@k (k = ``truth``'s width, the exact top-k
    of ``queries``) reaches ``target``: the fewest leaves searched for a tree with exact
    scoring, the fewest re-ordered candidates for hashing (:func:`search_ladder`, tried in
    increasing order). Returns (setting, value, {value tried: recall}); when nothing
    reaches the target, the largest value tried (the caller checks its floor)."""
    k = truth.shape[1]
    name, values = search_ladder(searcher, k)
    tried: dict[int, float] = {}
    for value in values:
        found, _ = searcher.search(queries, k, **{name: value})
        tried[value] = recall_at_k(found, truth)
        if tried[value] >= target:
            return name, value, tried
    return name, max(tried), tried


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k found by the approximate top-k (ids [B, k])."""
    if exact.size == 0:
        return float("nan")
    hits = [np.intersect1d(a, e).size / e.size for a, e in zip(approx, exact)]
    return float(np.mean(hits))
