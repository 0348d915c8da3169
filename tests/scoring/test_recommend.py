"""Worker-side top-N: exact N per user, nothing already rated, deep users handled."""

from __future__ import annotations

import numpy as np
import pytest

import tensorflow as tf

from recsys.config import ModelConfig
from recsys.index.searcher import MovieSearcher, scann_settings
from recsys.model.export import save_user_tower
from recsys.model.serving import load_user_tower
from recsys.model.inputs import MovieCatalog
from recsys.model.towers import HistoryUserTower
from recsys.csr import ranked_movies
from recsys.scoring.recommend import drop_seen, recommend
from tests.model.conftest import movie_tables

CFG = ModelConfig(history_length=20, hidden_dim=8, attention_heads=2, embedding_dim=8,
                  tower_layers=(8,))
N_MOVIES = 3000


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)
    movies, vocab = movie_tables(N_MOVIES)
    catalog = MovieCatalog.from_tables(movies, vocab, CFG)
    tower = HistoryUserTower(catalog.size, CFG)
    tower((np.zeros((1, 20), np.int32), np.zeros((1, 20), np.float32)))
    directory = str(tmp_path_factory.mktemp("tower"))
    save_user_tower(directory, tower, kind="history", ids=catalog.movie_ids,
                    info={"history_length": 20, "embedding_dim": 8, "model_version": "m1"})
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N_MOVIES, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = catalog.movie_ids
    return (load_user_tower(directory), emb, ids,
            MovieSearcher.build(emb, ids, kind="scann", num_neighbors=10,
                                settings=scann_settings(N_MOVIES, 10, scoring="ah", leaves=1,
                                                       reorder=1000)),
            MovieSearcher.build(emb, ids, kind="exact", num_neighbors=10))


def test_drop_seen_by_hand():
    ids = np.array([[5, 3, 9, 1], [2, 4, 6, 8]])
    scores = np.array([[4, 3, 2, 1], [4, 3, 2, 1]], np.float32)
    top, top_scores, found = drop_seen(ids, scores, np.array([0, 2, 5]),
                                       np.array([3, 1, 2, 4, 6]), 2)
    assert top.tolist() == [[5, 9], [8, 2]]
    assert found.tolist() == [2, 1]  # the second user has one unrated candidate, 8
    assert top_scores[0].tolist() == [4, 2]


@pytest.mark.parametrize("marks_bytes, id_offset", [
    (1 << 22, 0),  # marks, one chunk
    (5_000, 0),  # marks, a chunk of one row
    (12_000, 0),  # marks, chunks of three rows: the last chunk is short
    (1 << 22, 10_000_000),  # ids too large to mark: sorted lookup
])
def test_drop_seen_matches_a_per_user_set_difference(monkeypatch, marks_bytes, id_offset):
    import recsys.scoring.recommend as rec

    monkeypatch.setattr(rec, "MARKS_BYTES", marks_bytes)
    rng = np.random.default_rng(3)
    users, depth, n = 7, 40, 12
    seen = [rng.choice(4_000, size=s, replace=False) + id_offset
            for s in (0, 3, 39, 200, 1, 3_000, 25)]
    offsets = np.concatenate([[0], np.cumsum([h.size for h in seen])])
    cand = np.stack([rng.choice(4_000, size=depth, replace=False) for _ in range(users)])
    cand += id_offset
    cand[3, :20] = seen[3][:20]  # rated candidates at the top of a list
    scores = -np.sort(rng.random((users, depth)).astype(np.float32), axis=1)
    scores[1, 5] = np.nan  # a candidate without a finite score is never kept
    top, top_scores, found = drop_seen(cand, scores, offsets, np.concatenate(seen), n)
    for u in range(users):
        keep = ~np.isin(cand[u], seen[u]) & np.isfinite(scores[u])
        want = cand[u][keep][:n]
        assert top[u][:want.size].tolist() == want.tolist()
        assert top_scores[u][:want.size].tolist() == scores[u][keep][:n].tolist()
        assert found[u] == want.size
    assert found[5] < n and found[0] == n


def test_every_user_gets_n_unrated_movies_even_with_thousands_rated(parts):
    tower, emb, ids, scann, exact = parts
    rng = np.random.default_rng(1)
    histories = [rng.choice(ids, size=s, replace=False) for s in (1, 20, 35, 300, 2_900)]
    offsets = np.concatenate([[0], np.cumsum([h.size for h in histories])])
    flat = np.concatenate(histories)
    recs = recommend(tower, scann, exact, user_ids=np.arange(5) + 1, offsets=offsets,
                     movie_ids=flat, ratings=np.full(flat.size, 4.0, np.float32), n=10,
                     max_scann_depth=64)
    assert recs.movie_ids.shape == (5, 10)
    for u, h in enumerate(histories):
        got = recs.movie_ids[u]
        assert len(set(got.tolist())) == 10 and not set(got.tolist()) & set(h.tolist())
        assert np.all(np.diff(recs.scores[u]) <= 1e-6)
        # ground truth: every unrated movie scored exactly
        full = emb @ recs.embeddings[u]
        full[np.isin(ids, h)] = -np.inf
        truth = ids[np.argsort(-full, kind="stable")[:10]]
        overlap = len(set(truth.tolist()) & set(got.tolist())) / 10
        if u >= 3:  # 310 and 2910 deep: beyond max_scann_depth, the exact searcher
            assert got.tolist() == truth.tolist()
        else:  # ScaNN (hashing, then 1,000 candidates re-ordered exactly): ~the truth
            assert overlap >= 0.9
    # the user who rated 2,900 of 3,000 movies still gets 10 of the remaining 100
    assert recs.movie_ids[4].size == 10


def test_n_larger_than_the_unrated_catalog_is_capped_at_the_catalog(parts):
    tower, _, ids, scann, exact = parts
    recs = recommend(tower, scann, exact, user_ids=np.array([1]), offsets=np.array([0, 0]),
                     movie_ids=np.zeros(0, np.int64), ratings=np.zeros(0, np.float32),
                     n=N_MOVIES + 5)
    assert recs.movie_ids.shape == (1, N_MOVIES)
    assert sorted(recs.movie_ids[0].tolist()) == sorted(ids.tolist())
    assert recs.counts.tolist() == [N_MOVIES]


def test_a_user_with_fewer_than_n_unrated_movies_gets_those_and_no_rated_one(parts):
    tower, _, ids, scann, exact = parts
    rated = [ids[:N_MOVIES - 4], ids[:1], ids[:0]]  # 4, N - 1 and N movies left unrated
    offsets = np.concatenate([[0], np.cumsum([r.size for r in rated])])
    flat = np.concatenate(rated)
    for n in (10, N_MOVIES + 5):
        recs = recommend(tower, scann, exact, user_ids=np.arange(3) + 1, offsets=offsets,
                         movie_ids=flat, ratings=np.full(flat.size, 4.0, np.float32), n=n)
        want = [4, min(n, N_MOVIES - 1), min(n, N_MOVIES)]
        assert recs.counts.tolist() == want
        for u, r in enumerate(rated):
            got = recs.movie_ids[u, :want[u]].tolist()
            assert len(set(got)) == want[u] and not set(got) & set(r.tolist())
        column = ranked_movies(recs.movie_ids, recs.scores, recs.counts)
        assert [len(row) for row in column.to_pylist()] == want
        assert column[0].values.field("movie_id").to_pylist() == \
            recs.movie_ids[0, :4].tolist()
        assert column[0].values.field("score").to_numpy().tolist() == \
            recs.scores[0, :4].tolist()


def test_length_sorted_narrow_batches_embed_like_full_width_windows(parts):
    from recsys.model.serving import embed_histories
    from recsys.model.inputs import windows

    tower, _, ids, _, _ = parts
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 60, 37)  # longer and shorter than history_length (20)
    histories = [rng.choice(ids, size=s, replace=False) for s in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate(histories)
    ratings = rng.uniform(0.5, 5, flat.size).astype(np.float32)
    got = embed_histories(tower, np.arange(37), flat, ratings, offsets, batch_size=8)
    m, r = windows(flat, ratings, offsets[:-1], offsets[1:], 20)
    np.testing.assert_allclose(got, tower.embed(m, r), rtol=0, atol=1e-5)
