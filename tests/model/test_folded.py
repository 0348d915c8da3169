"""The serving form of the history tower computes what the Keras tower computes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsys.config import ModelConfig
from recsys.model.folded import FoldedHistoryTower
from recsys.model.towers import HistoryUserTower

# The Keras tower works in float32 step by step; the folded and NumPy forms fold their
# tables in float64 and round once, so they differ by float32 rounding carried through
# the layer normalisation (at most 1.3e-6 over 40 seeds; one unseeded CI run saw 2.5e-6).
# A wrong mask, scale or folded term moves the outputs by 0.05 or more.
ROUNDING = 1e-5


def _histories(rng: np.random.Generator, rows: int, width: int, movies: int):
    m = rng.integers(1, movies + 1, size=(rows, width)).astype(np.int32)
    r = rng.choice(np.arange(0.5, 5.5, 0.5), size=(rows, width)).astype(np.float32)
    lengths = rng.integers(0, width + 1, size=rows)
    lengths[:3] = [0, 1, width]  # no history, one rating, a full window
    pad = np.arange(width)[None, :] < (width - lengths)[:, None]
    return np.where(pad, 0, m), np.where(pad, 0.0, r).astype(np.float32)


def sharpened_tower(layers, normalize, length: int = 7, movies: int = 30):
    """A built history tower (the same initial weights on every run) with sharpened
    attention, and 40 histories 10 wide (wider than ``length``: cut to its last columns).
    Random weights give near-uniform attention; sharpening the projections makes the
    attention pattern (and its mask) matter to the comparisons."""
    cfg = ModelConfig(history_length=length, hidden_dim=8, attention_heads=2, embedding_dim=4,
                      tower_layers=layers, normalize=normalize)
    tf.keras.utils.set_random_seed(11)
    tower = HistoryUserTower(movies, cfg)
    m, r = _histories(np.random.default_rng(3), 40, 10, movies)
    tower((m, r))  # builds it
    for v in tower.attention.weights:
        v.assign(v * 4.0)
    return tower, m, r


@pytest.mark.parametrize("layers,normalize", [((16,), True), ((), True), ((8, 8), False)])
def test_folded_tower_equals_the_keras_tower(layers, normalize):
    tower, m, r = sharpened_tower(layers, normalize)
    expected = tower((m, r)).numpy()
    folded = FoldedHistoryTower(tower)((m, r)).numpy()
    assert folded.shape == (40, 4)
    np.testing.assert_allclose(folded, expected, rtol=0, atol=ROUNDING)
    if normalize:  # (users with nothing in the window embed as the zero head bias)
        seen = (m[:, -7:] > 0).any(axis=1)
        np.testing.assert_allclose(np.linalg.norm(folded[seen], axis=1), 1.0, atol=1e-6)
    # changing a padded column's rating changes nothing
    m2, r2 = m.copy(), r.copy()
    padded = m2 == 0
    r2[padded] = 5.0
    np.testing.assert_allclose(FoldedHistoryTower(tower)((m2, r2)).numpy(), folded, atol=1e-6)


def test_an_unbuilt_tower_is_refused_with_a_clear_error():
    tower = HistoryUserTower(30, ModelConfig(history_length=4, hidden_dim=8,
                                             attention_heads=2, embedding_dim=4))
    with pytest.raises(ValueError, match="not built"):
        FoldedHistoryTower(tower)
