"""Stage runs: a failure is recorded next to what the run wrote; commit seals a run."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from recsys import artifacts, io
from recsys.config import Config, ConfigError


def test_an_error_inside_a_run_is_recorded_and_propagates(tmp_path):
    root = io.normalize_uri(tmp_path)
    run_dir = artifacts.stage_dir(root, "train", "r1")
    manifest = artifacts.Manifest("train", "r1", Config())
    with pytest.raises(ValueError, match="bad embeddings"):
        with artifacts.failure_recorded(run_dir, manifest):
            raise ValueError("bad embeddings")
    written = json.loads((tmp_path / "train" / "r1" / artifacts.MANIFEST).read_text())
    assert written["status"] == "failed"
    assert written["error"] == "ValueError: bad embeddings"
    assert not (tmp_path / "train" / "r1" / artifacts.SUCCESS).exists()
    assert not (tmp_path / "train" / artifacts.LATEST).exists()


def test_a_run_that_never_started_writing_leaves_nothing_when_asked(tmp_path):
    run_dir = artifacts.stage_dir(io.normalize_uri(tmp_path), "preprocess", "r2")
    manifest = artifacts.Manifest("preprocess", "r2", Config())
    with pytest.raises(KeyboardInterrupt):
        with artifacts.failure_recorded(run_dir, manifest, only_if_started=True):
            raise KeyboardInterrupt
    assert not (tmp_path / "preprocess").exists()


def test_commit_seals_the_run_and_moves_latest(tmp_path):
    root = io.normalize_uri(tmp_path)
    run_dir = artifacts.stage_dir(root, "index", "r3")
    io.write_text(io.join(run_dir, "data.txt"), "payload")
    manifest = artifacts.Manifest("index", "r3", Config())
    with artifacts.failure_recorded(run_dir, manifest):
        artifacts.commit(root, "index", run_dir, manifest, Config())
    assert artifacts.resolve(root, "index") == run_dir
    sealed = json.loads((tmp_path / "index" / "r3" / artifacts.MANIFEST).read_text())
    assert sealed["status"] == "succeeded"
    outputs = {o["path"]: o["md5"] for o in sealed["outputs"]}
    assert outputs == {"data.txt": io.md5(io.join(run_dir, "data.txt")), "config.toml":
                       io.md5(io.join(run_dir, "config.toml"))}


def test_a_run_date_is_a_calendar_day_written_yyyy_mm_dd():
    assert artifacts.run_date("2026-02-28") == "2026-02-28"
    assert len(artifacts.run_date()) == 10  # today, UTC
    # 17:30 UTC on the 6th: still the 6th in UTC and in New York, already the 7th in Tokyo
    evening = dt.datetime(2026, 12, 6, 17, 30, tzinfo=dt.timezone.utc)
    assert artifacts.run_date(now=evening) == "2026-12-06"
    assert artifacts.run_date(timezone="Asia/Tokyo", now=evening) == "2026-12-07"
    assert artifacts.run_date(timezone="America/New_York", now=evening) == "2026-12-06"
    assert artifacts.run_date("2026-02-28", timezone="Asia/Tokyo", now=evening) == "2026-02-28"
    for bad in ("2026-02-30", "2026-2-28", "20260228", "2026-02-28T00:00", "tomorrow", ""):
        with pytest.raises(ConfigError, match="--run-date must be a date written YYYY-MM-DD"):
            artifacts.run_date(bad)


def test_a_run_date_in_the_local_zone_is_the_machines_calendar(monkeypatch):
    evening = dt.datetime(2026, 12, 6, 17, 30, tzinfo=dt.timezone.utc)
    try:
        for zone, day in (("Asia/Tokyo", "2026-12-07"), ("America/Los_Angeles", "2026-12-06")):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            assert artifacts.run_date(timezone="local", now=evening) == day
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_new_run_gets_a_fresh_id_and_directory(tmp_path):
    root = io.normalize_uri(tmp_path)
    run_id, run_dir = artifacts.claim_run(root, "train")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", run_id)
    assert run_dir == io.join(root, "train", run_id) and not io.exists(run_dir)
    assert artifacts.claim_run(root, "train", "nightly-7_b.2") == (
        "nightly-7_b.2", io.join(root, "train", "nightly-7_b.2"))


@pytest.mark.parametrize("bad", ["../escape", "a/b", "LATEST", ".hidden", "-x", "a b", "",
                                 "x" * 129])
def test_a_run_id_that_is_not_a_plain_name_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="--run-id must be a plain name"):
        artifacts.claim_run(io.normalize_uri(tmp_path), "preprocess", bad)


def test_an_existing_run_is_never_claimed_again_done_or_failed(tmp_path):
    root = io.normalize_uri(tmp_path)
    (tmp_path / "score" / "failed-one").mkdir(parents=True)
    with pytest.raises(ConfigError, match="score run failed-one already exists at .*never "
                                          "overwritten"):
        artifacts.claim_run(root, "score", "failed-one")


@pytest.mark.parametrize("name", ["nosuch", "../train", "LATEST"])
def test_a_named_run_that_does_not_exist_is_said_so(tmp_path, name):
    root = io.normalize_uri(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / artifacts.LATEST).write_text("x\n")
    with pytest.raises(artifacts.ArtifactError,
                       match=rf"there is no 'train' run '{re.escape(name)}' under .*/train$"):
        artifacts.resolve(root, "train", name)


@pytest.mark.parametrize("pointer", ["", "\n", "gone", "../../etc"])
def test_a_latest_pointer_that_names_no_run_is_said_so(tmp_path, pointer):
    """Was "there is no 'train' run ''", which did not say where the name came from."""
    root = io.normalize_uri(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / artifacts.LATEST).write_text(pointer)
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.resolve(root, "train")
    assert str(err.value) == (
        f"{root}/train/LATEST names {pointer.strip()!r}, which is not a 'train' run there (the "
        "pointer was emptied or edited, or the run removed by hand): run the train job again, "
        "or name a run of it")


def test_a_named_run_without_success_is_incomplete(tmp_path):
    (tmp_path / "train" / "half").mkdir(parents=True)
    with pytest.raises(artifacts.ArtifactError, match="'train' run half at .* is incomplete"):
        artifacts.resolve(io.normalize_uri(tmp_path), "train", "half")
