"""Which preprocess run a model is evaluated on: the one it was trained on, never another."""

from __future__ import annotations

import pytest

from recsys import artifacts, io
from recsys.config import Config, ModelConfig, TrainConfig
from recsys.evaluation.evaluate import check_inputs, models_preprocess_run


def _runs(tmp_path, *names):
    root = io.normalize_uri(tmp_path)
    for name in names:
        run_dir = artifacts.stage_dir(root, "preprocess", name)
        io.write_text(io.join(run_dir, "histories.txt"), f"the histories of {name}")
        artifacts.commit(root, "preprocess", run_dir,
                         artifacts.Manifest("preprocess", name, Config()), Config())
    return root


MODEL = {"run_id": "model-1", "inputs": {"preprocess_run": "monday"}}


def test_a_model_is_evaluated_on_its_own_run_not_the_latest(tmp_path):
    root = _runs(tmp_path, "monday", "tuesday")
    assert models_preprocess_run(root, MODEL) == io.join(root, "preprocess", "monday")
    assert models_preprocess_run(root, MODEL, "monday") == io.join(root, "preprocess", "monday")


def test_another_run_is_refused_with_the_reason_and_the_way_out(tmp_path):
    root = _runs(tmp_path, "monday", "tuesday")
    with pytest.raises(artifacts.ArtifactError,
                       match="model model-1 was trained on preprocess run monday; on preprocess "
                             "run tuesday it could be scored on users or ratings it was trained "
                             "on. Evaluate it on monday .*or train a model on tuesday first"):
        models_preprocess_run(root, MODEL, "tuesday")


def test_the_models_run_removed_by_hand_is_said_so(tmp_path):
    root = _runs(tmp_path, "tuesday")
    with pytest.raises(artifacts.ArtifactError, match="there is no 'preprocess' run 'monday'"):
        models_preprocess_run(root, MODEL)


def _model(root, run_id, trained_on, config=Config()):
    run_dir = artifacts.stage_dir(root, "train", run_id)
    io.write_text(io.join(run_dir, "weights.txt"), "a model")
    manifest = artifacts.Manifest("train", run_id, config)
    manifest["inputs"] = {"preprocess_run": trained_on}
    artifacts.commit(root, "train", run_dir, manifest, config)


def test_a_refused_or_corrupt_input_leaves_no_evaluate_run(tmp_path):
    """Checked before Spark starts (the job calls check_inputs first)."""
    root = _runs(tmp_path, "monday", "tuesday")
    _model(root, "model-1", "monday")
    config = Config().replace(artifact_root=root)
    with pytest.raises(artifacts.ArtifactError, match="was trained on preprocess run monday"):
        check_inputs(config, run_id="e1", preprocess_run="tuesday")
    (tmp_path / "preprocess" / "monday" / "histories.txt").write_text("the histories of mondaY")
    with pytest.raises(artifacts.ArtifactError, match="histories.txt does not match its MD5"):
        check_inputs(config, run_id="e1b")  # the model's own preprocess run
    (tmp_path / "preprocess" / "monday" / "histories.txt").write_text("the histories of monday")
    (tmp_path / "train" / "model-1" / "weights.txt").write_text("a modeL")
    with pytest.raises(artifacts.ArtifactError, match="weights.txt does not match its MD5"):
        check_inputs(config, run_id="e2")
    mf = Config().replace(model=ModelConfig(kind="mf"), train=TrainConfig(objective="next_item"))
    _model(root, "mf-1", "monday", mf)
    with pytest.raises(artifacts.ArtifactError, match="train run mf-1 is a 'mf' model .*only a "
                                                      "'history' model can do"):
        check_inputs(config, run_id="e3")
    assert not (tmp_path / "evaluate").exists()
