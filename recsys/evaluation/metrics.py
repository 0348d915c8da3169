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


def per_user(hits: np.ndarray, n_relevant: np.ndarray, metric: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per user with a relevant item, such that the metric over
    any multiset of those users is ``sum(num) / sum(den)``: Recall@K and HR@K are means
    of per-user values (denominator 1); ``topK_accuracy`` pools hits over ratings."""
    keep = n_relevant > 0
    top, n_rel = hits[keep], n_relevant[keep]
    name, _, k_text = metric.partition("@")
    if metric.startswith("top") and metric.endswith("_accuracy"):
        k = int(metric[3:-len("_accuracy")])
        return top[:, :k].sum(axis=1).astype(np.float64), n_rel.astype(np.float64)
    k = int(k_text)
    ones = np.ones(n_rel.size)
    if name == "recall":
        return top[:, :k].sum(axis=1) / np.minimum(k, n_rel), ones
    if name == "hr":
        return top[:, :k].any(axis=1).astype(np.float64), ones
    raise ValueError(f"no per-user form for metric {metric!r}")


def paired_bootstrap(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], *,
                     resamples: int = 2000, seed: int = 0, level: float = 0.95
                     ) -> tuple[float, float, float]:
    """Model a's metric minus model b's on the same users, with a percentile bootstrap
    confidence interval: users are resampled with replacement, the same users for both
    models (so what is common to both users' difficulty cancels). Returns (difference,
    low, high)."""
    (num_a, den_a), (num_b, den_b) = a, b
    if num_a.shape != num_b.shape:
        raise ValueError(f"paired comparison needs the same users: {num_a.shape} vs "
                         f"{num_b.shape}")
    users = num_a.size
    if users == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum())
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, users, users)
        draws[i] = (num_a[pick].sum() / max(den_a[pick].sum(), 1e-12)
                    - num_b[pick].sum() / max(den_b[pick].sum(), 1e-12))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return diff, float(low), float(high)


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
