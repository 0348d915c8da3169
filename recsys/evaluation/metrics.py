"""Ranking metrics on exact top-K lists (DESIGN §6), in numpy.

Per-user sets (what each user has seen, what each must find) are CSR pairs
``(offsets [U+1], flat values)``: user ``u`` owns ``flat[offsets[u]:offsets[u+1]]``.

* Recall@K is truncated as in Liang et al. 2018: hits in the top K divided by
  ``min(K, number of relevant items)``, so a perfect ranking scores 1 at every K.
* NDCG@K is binary: DCG of the hits over the DCG of ``min(K, relevant)`` hits ranked first.
* Users with no relevant item are skipped (they carry no signal).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

Csr = tuple[np.ndarray, np.ndarray]


def csr_from_lists(rows: Iterable[Iterable[int]]) -> Csr:
    arrays = [np.asarray(list(r), np.int64) for r in rows]
    offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return offsets, flat


def _keys(owner: np.ndarray, item: np.ndarray) -> np.ndarray:
    return owner.astype(np.int64) << 32 | item.astype(np.int64)


def hits_matrix(ranked: np.ndarray, relevant: Csr) -> np.ndarray:
    """Boolean [U, K]: is ``ranked[u, j]`` in user u's relevant set."""
    offsets, flat = relevant
    users, k = ranked.shape
    owner = np.repeat(np.arange(users), np.diff(offsets))
    rank_owner = np.repeat(np.arange(users), k)
    return np.isin(_keys(rank_owner, ranked.ravel()), _keys(owner, flat)).reshape(users, k)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    keep = n_relevant > 0
    if not keep.any():
        return float("nan")
    found = hits[keep, :k].sum(axis=1)
    return float(np.mean(found / np.minimum(k, n_relevant[keep])))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    keep = n_relevant > 0
    if not keep.any():
        return float("nan")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    top = hits[keep, :k]
    dcg = (top * discount[: top.shape[1]]).sum(axis=1)
    ideal_n = np.minimum(k, n_relevant[keep])
    ideal = np.cumsum(discount)[ideal_n - 1]
    return float(np.mean(dcg / ideal))


def hit_rate_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    keep = n_relevant > 0
    if not keep.any():
        return float("nan")
    return float(np.mean(hits[keep, :k].any(axis=1)))


def ranking_metrics(ranked: np.ndarray, relevant: Csr, *,
                    recall_ks: Iterable[int] = (10, 20, 50, 100),
                    ndcg_ks: Iterable[int] = (10, 100),
                    hit_ks: Iterable[int] = ()) -> dict[str, float]:
    """Recall@K, NDCG@K (and HR@K) of ranked lists [U, K_max] against relevant sets."""
    hits = hits_matrix(ranked, relevant)
    n_rel = np.diff(relevant[0])
    out: dict[str, float] = {}
    for k in recall_ks:
        out[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = ndcg_at_k(hits, n_rel, k)
    for k in hit_ks:
        out[f"hr@{k}"] = hit_rate_at_k(hits, n_rel, k)
    out["users"] = int((n_rel > 0).sum())
    return out


def top_k_exact(
    score_batch: Callable[[slice], np.ndarray],
    n_users: int,
    k: int,
    exclude: Csr | None = None,
    *,
    batch_size: int = 512,
    invalid_columns: Iterable[int] = (0,),
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K columns and scores per user, best first, excluding each user's set.

    ``score_batch(rows)`` returns the dense scores [len(rows), n_items] of a slice of
    users (e.g. ``user_emb[rows] @ item_emb.T``). Columns in ``invalid_columns`` (the
    padding index) and in ``exclude[u]`` are never returned.
    """
    offsets, flat = exclude if exclude is not None else (np.zeros(n_users + 1, np.int64),
                                                         np.zeros(0, np.int64))
    top = np.zeros((n_users, k), np.int64)
    top_scores = np.zeros((n_users, k), np.float32)
    bad = np.asarray(list(invalid_columns), np.int64)
    for start in range(0, n_users, batch_size):
        rows = slice(start, min(start + batch_size, n_users))
        scores = np.array(score_batch(rows), dtype=np.float32, copy=True)
        scores[:, bad] = -np.inf
        lo, hi = offsets[rows.start], offsets[rows.stop]
        owner = np.repeat(np.arange(rows.stop - rows.start), np.diff(offsets[rows.start:rows.stop + 1]))
        scores[owner, flat[lo:hi]] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        top[rows, :kk] = np.take_along_axis(part, order, axis=1)
        top_scores[rows, :kk] = np.take_along_axis(part_scores, order, axis=1)
    return top, top_scores


def most_popular_scores(counts: np.ndarray) -> Callable[[slice], np.ndarray]:
    """The most-popular baseline as a scorer: every user gets the item counts as scores."""
    base = np.asarray(counts, np.float32)[None, :]

    def score(rows: slice) -> np.ndarray:
        return np.repeat(base, rows.stop - rows.start, axis=0)

    return score
