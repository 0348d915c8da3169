"""Real training on ml-latest-small: quality, artifacts, export round trip, unseen users."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import artifacts, io
from recsys.config import ModelConfig, TrainConfig
from recsys.evaluation.metrics import most_popular_scores, ranking_metrics, top_k_exact
from recsys.model.examples import TEST, held_out_users
from recsys.model.export import save_user_tower
from recsys.model.serving import load_user_tower
from recsys.model.inputs import pad_histories, windows
from recsys.model.train import run_train
from tests.conftest import REPO



@pytest.fixture
def trained(small_trained):
    return small_trained


def _test_user_metrics(result, embed_users):
    """Held-out *test* users (used neither in training nor for epoch selection)."""
    t = result.trained
    users = held_out_users(t.stream, TEST)
    seen = (users.inputs.offsets, users.inputs.movies.astype(np.int64))
    movie_emb = t.movie_embeddings()
    user_emb = embed_users(users)
    n = users.user_ids.size
    model, _ = top_k_exact(lambda rows: user_emb[rows] @ movie_emb.T, n, 100, seen)
    popular, _ = top_k_exact(most_popular_scores(t.scan.train_counts), n, 100, seen)
    return ranking_metrics(model, users.truth), ranking_metrics(popular, users.truth), users


def test_loss_falls_and_test_users_get_better_lists_than_most_popular(trained):
    loss = trained.metrics["history"]["loss"]
    assert min(loss[1:]) < loss[0]
    val = trained.metrics["history"]["val_recall@20"]
    assert max(val[1:]) > val[0]
    # Held-out *test* users: used neither in training nor for epoch selection
    # (`make bench-train-quality` measured 0.354 / 0.267 against 0.266 / 0.216).
    model, popular, users = _test_user_metrics(trained, trained.trained.user_embeddings)
    assert users.user_ids.size > 40
    chance = 50 / 9_742
    assert model["recall@50"] > 20 * chance
    assert model["recall@50"] > popular["recall@50"], (model, popular)
    assert model["ndcg@100"] > popular["ndcg@100"], (model, popular)


def test_artifacts_are_complete_and_checksummed(trained):
    run_dir = trained.run_dir
    root = os.path.dirname(os.path.dirname(io.local_path(run_dir)))
    assert artifacts.resolve(root, "train") == run_dir
    manifest = artifacts.read_manifest(run_dir)
    outputs = {o["path"]: o for o in manifest["outputs"]}
    for path in ("user_tower/saved_model.pb", "model.json", "metrics.json", "config.toml",
                 "vocab/movies.parquet", "vocab/genres.txt", "vocab/title_tokens.txt",
                 "movie_embeddings/part-00000.parquet"):
        assert path in outputs, path
        assert outputs[path]["md5"] == io.md5(io.join(run_dir, path))
    assert any(p.startswith("tensorboard/") for p in outputs)
    emb = pq.read_table(io.local_path(io.join(run_dir, "movie_embeddings")))
    assert emb.schema.field("movie_id").type == pa.int32()
    assert emb.schema.field("embedding").type.value_type == pa.float32()
    assert emb.num_rows == 9_742
    assert {len(e) for e in emb.column("embedding").to_pylist()} == {64}
    info = json.loads(open(io.local_path(io.join(run_dir, "model.json"))).read())
    assert info["model_version"] == manifest["run_id"] and info["kind"] == "history"
    assert manifest["counts"]["examples"] > 0 and manifest["counts"]["epochs"] >= 1
    assert set(manifest["metrics"]["validation"]["model"]) >= {
        "recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@100"}


def test_saved_model_takes_raw_histories_and_round_trips_exactly(trained, tmp_path):
    t = trained.trained
    users = held_out_users(t.stream, TEST)  # never trained on: scored from history alone
    length = t.model.user_tower.history_length
    m, r = windows(users.inputs.movies, users.inputs.ratings, users.inputs.offsets[:-1],
                   users.inputs.offsets[1:], length)
    in_memory = t.model.user_tower((m, r)).numpy()
    raw = np.where(m > 0, t.catalog.id_of(np.maximum(m, 1)), 0)
    loaded = load_user_tower(io.local_path(trained.run_dir))
    assert loaded.form == "numpy"  # what scoring loads; the SavedModel gives the same
    exported = loaded.embed(raw, r)
    np.testing.assert_allclose(exported, in_memory, rtol=0, atol=1e-5)
    saved = load_user_tower(io.local_path(trained.run_dir), form="savedmodel").embed(raw, r)
    np.testing.assert_allclose(saved, in_memory, rtol=0, atol=1e-5)
    # exporting the same tower again gives bit-identical embeddings
    save_user_tower(str(tmp_path), t.model.user_tower, kind="history",
                    ids=t.catalog.movie_ids, info=loaded.info | {"copy": True})
    again = load_user_tower(str(tmp_path)).embed(raw, r)
    np.testing.assert_array_equal(again, exported)
    # wider inputs are cut to the last history_length columns; unknown ids are padding
    wide = np.hstack([np.full((raw.shape[0], 7), 99_999_999), raw])
    np.testing.assert_allclose(loaded.embed(wide, np.hstack([np.ones((raw.shape[0], 7),
                               np.float32), r])), exported, atol=1e-6)


def test_a_brand_new_user_is_scored_from_a_history(trained):
    loaded = load_user_tower(io.local_path(trained.run_dir))
    toy = [1, 2355, 3114, 78499]  # Toy Story 1-3 and A Bug's Life
    crime = [296, 858, 1221, 50]  # Pulp Fiction, Godfather I/II, Usual Suspects
    m, r = pad_histories([np.array(toy), np.array(crime)], [np.full(4, 5.0)] * 2, 8)
    users = loaded.embed(m, r)
    t = trained.trained
    movie_emb = t.movie_embeddings()
    top, _ = top_k_exact(lambda rows: users[rows] @ movie_emb.T, 2, 20,
                         (np.array([0, 4, 8]), t.catalog.index_of(np.array(toy + crime))))
    ids = [set(t.catalog.id_of(row).tolist()) for row in top]
    assert not ids[0] & set(toy) and not ids[1] & set(crime)
    assert len(ids[0] & ids[1]) < 15  # two different tastes, two different lists


def test_matrix_factorization_baseline_trains_and_exports(small_run, tmp_path):
    config, _ = small_run
    cfg = config.replace(artifact_root=config.artifact_root,
                         model=ModelConfig(kind="mf"),
                         train=TrainConfig(epochs=2, examples_per_user=1000, learning_rate=0.01,
                                           tensorboard=False))
    result = run_train(cfg, run_id="mf-test")
    assert result.metrics["validation"]["model"]["recall@100"] > 0
    tower = load_user_tower(io.local_path(result.run_dir))
    emb = tower.embed_users(np.array([1, 2, 10**9]))
    assert emb.shape == (3, 64) and np.all(np.isfinite(emb))
    with pytest.raises(TypeError, match="'mf' model"):
        tower.embed(np.zeros((1, 2)), np.zeros((1, 2)))
    # who it can embed: the users of its preprocess run, no one else (a user it never saw
    # gets the untrained row 0, the same for all of them, and scoring refuses the model)
    from recsys.model.serving import users_without_embedding
    from recsys.scoring.score import check_users

    histories = io.join(artifacts.resolve(cfg.artifact_root, "preprocess"), "histories")
    assert users_without_embedding(result.run_dir, histories).size == 0
    check_users(result.run_dir, os.path.dirname(histories), "mf-test")
    users = io.read_parquet(histories, columns=["user_id"]).column("user_id").to_numpy()
    unseen = np.array([10**6 + 3, 10**6 + 1], np.int64)
    os.makedirs(tmp_path / "tonight" / "histories")
    pq.write_table(pa.table({"user_id": np.concatenate([users[5:], unseen])}),
                   tmp_path / "tonight" / "histories" / "part-00000.parquet")
    tonight = str(tmp_path / "tonight" / "histories")
    assert users_without_embedding(result.run_dir, tonight).tolist() == sorted(unseen)
    new = tower.embed_users(unseen)
    assert np.array_equal(new[0], new[1])  # why: one shared row
    with pytest.raises(artifacts.ArtifactError,
                       match=r"model mf-test \(mf: one embedding per user id\) has none for 2 "
                             r"users of .*tonight \(1000001, 1000003\): it can score only"):
        check_users(result.run_dir, str(tmp_path / "tonight"), "mf-test")


def test_train_job_runs_and_fails_clearly_without_preprocess(small_run, tmp_path, job_env):
    config, _ = small_run
    # four steps of training: far below most-popular, which the job would refuse to commit
    cmd = [sys.executable, str(REPO / "jobs/train.py"), "--set", "train.epochs=1",
           "--set", "train.examples_per_user=32", "--set", "train.min_recall_vs_popular=0"]
    ok = subprocess.run(cmd + ["--artifact-root", config.artifact_root], env=job_env,
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "validation recall@20" in ok.stdout and "wrote" in ok.stdout
    missing = subprocess.run(cmd + ["--artifact-root", str(tmp_path / "empty")], env=job_env,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 4
    assert "no completed 'preprocess' run" in missing.stderr


def test_a_corrupt_preprocess_run_is_refused_before_training(small_run, tmp_path):
    """Was a Parquet "magic bytes not found" traceback from the example stream."""
    import shutil

    config, _ = small_run
    root = tmp_path / "art"
    shutil.copytree(io.local_path(config.artifact_root) + "/preprocess", root / "preprocess")
    victim = sorted(root.glob("preprocess/*/histories/part-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(artifacts.ArtifactError, match=f"{victim.name} has 1000 bytes, the "
                                                      "manifest says [0-9]+: truncated"):
        run_train(config.replace(artifact_root=str(root)))
    assert not (root / "train").exists()


def _own_root(config, tmp_path):  # noqa: ANN001
    """A root holding a copy of the shared preprocess run: a failed train run stays here."""
    import shutil

    root = tmp_path / "art"
    shutil.copytree(io.local_path(config.artifact_root) + "/preprocess", root / "preprocess")
    return root


def test_a_training_that_diverges_is_refused_and_the_latest_model_stays(small_run, tmp_path):
    """Was committed as the latest model (loss nan, validation recall 0.0000): the index
    then failed on it with a ValueError traceback every night until the model aged out."""
    from recsys.model.errors import UnusableModelError

    config, _ = small_run
    root = _own_root(config, tmp_path)
    cfg = config.replace(artifact_root=str(root), train=TrainConfig(
        epochs=1, examples_per_user=16, learning_rate=1e6, tensorboard=False))
    with pytest.raises(UnusableModelError, match=r"the model's movie embeddings hold NaN or "
                       r"infinite values: the training diverged; lower "
                       r"train.learning_rate \(now 1e\+06\) and train again"):
        run_train(cfg, run_id="diverged")
    assert not (root / "train" / "LATEST").exists()
    failed = json.loads((root / "train" / "diverged" / "manifest.json").read_text())
    assert failed["status"] == "failed" and "diverged" in failed["error"]
    assert not (root / "train" / "diverged" / "movie_embeddings").exists()


def test_a_model_far_below_most_popular_is_refused_unless_so_configured(small_run, tmp_path,
                                                                        job_env):
    """``train.min_recall_vs_popular``: a model that learned nothing (a learning rate a
    million times too small) fails the train job with exit 8; with the check off it is
    committed as before."""
    config, _ = small_run
    root = _own_root(config, tmp_path)
    cmd = [sys.executable, str(REPO / "jobs/train.py"), "--artifact-root", str(root),
           "--set", "train.epochs=1", "--set", "train.examples_per_user=16",
           "--set", "train.learning_rate=1e-9", "--set", "train.tensorboard=false"]
    refused = subprocess.run(cmd, env=job_env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 8, refused.stderr[-3000:]
    said = refused.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"train: model error: the trained model's validation recall@20 is (0\.\d{4}) on "
        r"(\d+) users, below train.min_recall_vs_popular = 0.5 times most-popular's "
        r"(0\.\d{4}) there: it is not published, and the latest model stays the one "
        r"scored\. .* or set train.min_recall_vs_popular=0 to publish it all the same", said)
    model, users, popular = re.fullmatch(r".* is (\S+) on (\d+) users.* most-popular's (\S+) "
                                         r"there.*", said).groups()
    assert float(model) < 0.5 * float(popular) and int(users) >= 20
    assert not (root / "train" / "LATEST").exists()
    [run] = [p for p in (root / "train").iterdir()]
    failed = json.loads((run / "manifest.json").read_text())
    assert failed["status"] == "failed"
    assert failed["metrics"]["validation"]["model"]["recall@20"] == pytest.approx(float(model),
                                                                                  abs=1e-4)
    kept = subprocess.run(cmd + ["--set", "train.min_recall_vs_popular=0"], env=job_env,
                          capture_output=True, text=True, timeout=600)
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert (root / "train" / "LATEST").is_file()


def test_the_check_against_most_popular_needs_enough_validation_users():
    from recsys.model.errors import UnusableModelError
    from recsys.model.train import check_against_popular

    def validation(model: float, popular: float, users: int) -> dict:
        return {"model": {"recall@20": model, "users": users},
                "most_popular": {"recall@20": popular, "users": users}}

    check = dict(metric="recall@20", min_ratio=0.5)
    check_against_popular(validation(0.05, 0.1, 20), **check)  # exactly half: kept
    with pytest.raises(UnusableModelError, match="is 0.0499 on 20 users"):
        check_against_popular(validation(0.0499, 0.1, 20), **check)
    check_against_popular(validation(0.0, 0.1, 19), **check)  # too few users to tell
    check_against_popular(validation(0.0, 0.1, 500), metric="recall@20", min_ratio=0)
    check_against_popular({}, **check)  # no validation users at all
