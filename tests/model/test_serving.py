"""The NumPy serving form computes what the SavedModel computes, and loads without
TensorFlow (what every Spark Python worker does when it scores users)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recsys.index.searcher import MovieSearcher
from recsys.model.export import save_user_tower
from recsys.model.folded import FoldedHistoryTower
from recsys.model.serving import (
    SERVING_ARRAYS, NumpyHistoryTower, embed_histories, load_user_tower, serving_form,
)
from tests.model.test_folded import ROUNDING, sharpened_tower

IDS = np.arange(30, dtype=np.int64) * 7 + 1000  # raw movie ids of model indices 1..30
# (sharpened_tower's 30 movies)


@pytest.mark.parametrize("layers,normalize", [((16,), True), ((), True), ((8, 8), False)])
def test_numpy_form_equals_the_folded_and_keras_towers(layers, normalize, tmp_path):
    tower, m, r = sharpened_tower(layers, normalize)
    expected = tower((m, r)).numpy()
    folded = FoldedHistoryTower(tower)
    np_tower = NumpyHistoryTower({**folded.arrays(), "movie_ids": IDS})
    got = np_tower(m, r)  # model indices, 10 columns: cut to the last 7
    assert got.dtype == np.float32 and got.shape == (40, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(got, folded((m, r)).numpy(), rtol=0, atol=ROUNDING)
    # the rating of a padded column is ignored
    r2 = np.where(m == 0, 5.0, r).astype(np.float32)
    np.testing.assert_allclose(np_tower(m, r2), got, atol=1e-6)
    # a batch without padding (the usual length-sorted batch) takes the cached causal mask
    rng = np.random.default_rng(4)
    full = np.where(m > 0, m, rng.integers(1, IDS.size + 1, size=m.shape)).astype(m.dtype)
    rf = np.where(m > 0, r, 3.5).astype(np.float32)
    np.testing.assert_allclose(np_tower(full, rf), tower((full, rf)).numpy(), rtol=0, atol=ROUNDING)


def test_exported_forms_agree_on_raw_ids_and_unknown_ids_are_padding(tmp_path):
    tower, m, r = sharpened_tower((16,), True)
    save_user_tower(str(tmp_path), tower, kind="history", ids=IDS,
                    info={"history_length": 7, "embedding_dim": 4})
    assert os.path.isfile(tmp_path / SERVING_ARRAYS)
    assert serving_form(str(tmp_path)) == "numpy"
    np_form = load_user_tower(str(tmp_path))
    saved = load_user_tower(str(tmp_path), form="savedmodel")
    assert (np_form.form, saved.form) == ("numpy", "savedmodel")
    raw = np.where(m > 0, IDS[np.maximum(m, 1) - 1], 0)
    np.testing.assert_allclose(np_form.embed(raw, r), saved.embed(raw, r), rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(np_form.embed(raw, r), tower((m, r)).numpy(), atol=ROUNDING)
    unknown = np.where(raw > 0, raw, 123_456_789)  # padding replaced by unknown ids
    np.testing.assert_allclose(np_form.embed(unknown, r), np_form.embed(raw, r), atol=1e-6)
    np.testing.assert_allclose(saved.embed(unknown, r), np_form.embed(unknown, r), atol=ROUNDING)
    # ids too large for the dense id table take the sorted lookup, with the same result
    with np.load(tmp_path / SERVING_ARRAYS) as data:
        arrays = {k: data[k] for k in data.files}
    big = NumpyHistoryTower({**arrays, "movie_ids": IDS + 60_000_000})
    big_raw = np.where(raw > 0, raw + 60_000_000, 0)
    np.testing.assert_allclose(big.embed(big_raw, r), np_form.embed(raw, r), rtol=0, atol=0)
    np.testing.assert_array_equal(big.index_of(big_raw), np_form.module.index_of(raw))
    # batching by history length gives the same embeddings as one full-width call
    lengths = (m > 0).sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = raw[raw > 0]
    flat_r = r[raw > 0]
    batched = embed_histories(np_form, np.arange(40), flat, flat_r, offsets, batch_size=8)
    np.testing.assert_allclose(batched, np_form.embed(raw[:, -7:], r[:, -7:]), atol=ROUNDING)


def test_a_run_without_the_arrays_falls_back_to_the_saved_model(tmp_path):
    tower, m, r = sharpened_tower((), True)
    save_user_tower(str(tmp_path), tower, kind="history", ids=IDS,
                    info={"history_length": 7, "embedding_dim": 4})
    os.remove(tmp_path / SERVING_ARRAYS)  # as exported by an earlier version
    assert serving_form(str(tmp_path)) == "savedmodel"
    assert load_user_tower(str(tmp_path)).form == "savedmodel"
    with pytest.raises(FileNotFoundError, match="no user_tower.npz"):
        load_user_tower(str(tmp_path), form="numpy")
    with pytest.raises(ValueError, match="form must be one of"):
        load_user_tower(str(tmp_path), form="onnx")


def test_arrays_from_another_version_are_refused_clearly():
    with pytest.raises(ValueError, match="re-export the model"):
        NumpyHistoryTower({"x_table": np.zeros((3, 2))})
    tower, _, _ = sharpened_tower((), True)
    arrays = FoldedHistoryTower(tower).arrays()
    with pytest.raises(ValueError, match="30 movies but 5 ids"):
        NumpyHistoryTower({**arrays, "movie_ids": IDS[:5]})


def test_scoring_loads_tower_and_searcher_without_importing_tensorflow(tmp_path):
    """What a Spark Python worker does: load the exported tower and the ScaNN searcher,
    embed and search, in a fresh interpreter; TensorFlow must never be imported."""
    tower, m, r = sharpened_tower((16,), True)
    save_user_tower(str(tmp_path / "model"), tower, kind="history", ids=IDS,
                    info={"history_length": 7, "embedding_dim": 4})
    emb = np.random.default_rng(0).normal(size=(IDS.size, 4)).astype(np.float32)
    MovieSearcher.build(emb, IDS, kind="scann", num_neighbors=5).save(str(tmp_path / "scann"))
    raw = np.where(m > 0, IDS[np.maximum(m, 1) - 1], 0)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "r.npy", r)
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import recsys
        from recsys.index.searcher import MovieSearcher
        from recsys.model.serving import load_user_tower
        tower = load_user_tower({str(tmp_path / 'model')!r})
        searcher = MovieSearcher.load({str(tmp_path / 'scann')!r})
        users = tower.embed(np.load({str(tmp_path / 'raw.npy')!r}),
                            np.load({str(tmp_path / 'r.npy')!r}))
        ids, _ = searcher.search(users, 5)
        print(json.dumps({{"tensorflow": "tensorflow" in sys.modules, "form": tower.form,
                          "users": users.tolist(), "top": ids.tolist()}}))
        import scann  # the real package is still importable afterwards
        assert hasattr(scann, "scann_ops_pybind") and hasattr(scann, "ScannBuilder")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tensorflow"] is False and result["form"] == "numpy"
    np.testing.assert_allclose(np.array(result["users"]), tower((m, r)).numpy(), atol=ROUNDING)
    expected = MovieSearcher.load(str(tmp_path / "scann")).search(
        np.array(result["users"], np.float32), 5)[0]
    assert result["top"] == expected.tolist()
