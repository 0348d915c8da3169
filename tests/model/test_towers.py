"""The towers on tiny inputs: masking, causality, content-only movies, the loss."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recsys.config import ModelConfig, TrainConfig
from recsys.model.inputs import MovieCatalog, title_words, year_bucket
from recsys.model.retrieval import TwoTowerModel
from recsys.model.towers import HistoryUserTower, MovieTower, masked_mean
from tests.model.conftest import movie_tables

CFG = ModelConfig(history_length=6, hidden_dim=8, attention_heads=2, embedding_dim=4,
                  tower_layers=(8,))


def test_masked_mean_by_hand():
    values = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = tf.constant([[True, False, True], [False, False, False], [False, True, False]])
    assert masked_mean(values, mask).numpy().tolist() == [2.0, 0.0, 8.0]


def test_title_words_and_year_buckets():
    assert title_words("American President, The (1995)") == ["american", "president", "the"]
    assert title_words("Babylon 5 (1994-1998)") == ["babylon", "5"]
    assert year_bucket(np.array([np.nan, 1890, 1900, 1903, 2019])).tolist() == [0, 1, 1, 2, 40]


def test_catalog_maps_ids_both_ways_and_unknown_ids_to_padding():
    catalog = MovieCatalog.from_tables(*movie_tables(6), ModelConfig())
    assert catalog.index_of(np.array([1, 6, 99, 0])).tolist() == [1, 6, 0, 0]
    assert catalog.id_of(np.array([1, 6])).tolist() == [1, 6]
    assert catalog.genres == ["Action", "Comedy", "Drama"]


def test_user_tower_is_causal_and_ignores_padding():
    tower = HistoryUserTower(20, CFG)
    movies = np.array([[0, 3, 7, 2, 9, 4]], np.int32)
    ratings = np.array([[0, 4.0, 3.5, 5.0, 1.0, 2.0]], np.float32)
    base = tower.features((movies, ratings)).numpy()
    later = movies.copy()
    later[0, 4:] = [11, 12]
    changed = tower.features((later, ratings * np.array([1, 1, 1, 1, 0.5, 2]))).numpy()
    # columns 0..3 only see columns <= themselves: later ratings cannot leak into them
    np.testing.assert_allclose(base[0, :4], changed[0, :4], rtol=0, atol=1e-6)
    assert not np.allclose(base[0, 4:], changed[0, 4:])
    # the same history with more left padding gives the same user
    padded = tower((np.pad(movies[:, 1:], ((0, 0), (3, 0)))[:, -6:], np.pad(
        ratings[:, 1:], ((0, 0), (3, 0)))[:, -6:])).numpy()
    np.testing.assert_allclose(tower((movies, ratings)).numpy(), padded, atol=1e-5)
    # at_columns(last column) is the call itself
    last = tower.at_columns((movies, ratings), np.array([[5]], np.int32)).numpy()[:, 0]
    np.testing.assert_allclose(last, tower((movies, ratings)).numpy(), atol=1e-6)


def test_new_movie_is_embedded_from_content():
    # seeded: an untrained ReLU head can map a movie to exactly zero for some initial weights
    tf.keras.utils.set_random_seed(3)
    movies, vocab = movie_tables(8, genome_for=(3, 5))
    catalog = MovieCatalog.from_tables(movies, vocab, CFG)
    counts = np.array([0, 5, 0, 5, 5, 0, 0, 0, 0])  # movies 2, 5..8: no training ratings
    tower = MovieTower(catalog, CFG, train_counts=counts)
    emb = tower(np.arange(1, 9, dtype=np.int32)).numpy()
    assert np.all(np.isfinite(emb)) and np.all(np.linalg.norm(emb, axis=1) > 0.5)
    # cold movies 6 (Action) and 7 (Comedy) differ in content, so do their embeddings
    assert not np.allclose(emb[5], emb[6])
    # cold movies 2 and 8 share genre and title words; given the same year as well, they
    # are the same movie to the tower: the (untrained) id rows play no part
    same_year = MovieCatalog.from_tables(movies, vocab, CFG)
    same_year.year_bucket[8] = same_year.year_bucket[2]
    tower2 = MovieTower(same_year, CFG, train_counts=counts)
    tower2(np.array([1], np.int32))
    tower2.set_weights(tower.get_weights())
    e2 = tower2(np.array([2, 8, 4], np.int32)).numpy()
    np.testing.assert_allclose(e2[0], e2[1], atol=1e-6)
    assert not np.allclose(e2[0], e2[2])  # a warm movie is not placed on the cold ones


def test_retrieval_loss_falls_on_a_learnable_toy_problem():
    tf.keras.utils.set_random_seed(0)
    movies, vocab = movie_tables(12)
    catalog = MovieCatalog.from_tables(movies, vocab, CFG)
    train = TrainConfig(logq_correction=True, remove_accidental_hits=True)
    model = TwoTowerModel(HistoryUserTower(catalog.size, CFG), MovieTower(catalog, CFG), model=CFG,
                          train=train, target_counts=np.ones(13))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02))
    rng = np.random.default_rng(0)
    # target = history movie + 6: a rule the towers can learn
    hist = rng.integers(1, 7, size=(64, 6)).astype(np.int32)
    batch = {
        "history_movies": hist, "history_ratings": np.full((64, 6), 4.0, np.float32),
        "target": (hist[:, -1:] + 6).astype(np.int32),
        "target_column": np.full((64, 1), 5, np.int32),
        "target_mask": np.ones((64, 1), bool),
    }
    one = tf.data.Dataset.from_tensors(batch)
    before = model.evaluate(one, verbose=0, return_dict=True)["loss"]
    model.fit(one.repeat(60), epochs=1, verbose=0)
    after = model.evaluate(one, verbose=0, return_dict=True)["loss"]
    assert after < 0.8 * before
