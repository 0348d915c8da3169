"""Retention of old runs (recsys.retention): runs sealed by the real artifacts.commit, on
the local filesystem; the nightly's own pruning is tested in tests/pipeline."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys import artifacts, io
from recsys.config import Config
from recsys.nightly import Runner, log_header, log_root
from recsys.publish import claim
from recsys.publish.claim import claim_uri
from recsys.retention import prune, runs_in_use
from tests.conftest import REPO
from tests.filesystems import run_unprivileged

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


def rid(day: int, hour: int = 2) -> str:
    return f"202611{day:02d}T{hour:02d}0000Z-0000{day:02d}"


def make_run(root: str, stage: str, run_id: str, complete: bool = True, **inputs: str) -> None:
    run_dir = artifacts.stage_dir(root, stage, run_id)
    io.write_text(io.join(run_dir, "part-0.bin"), "x" * 1000)
    manifest = artifacts.Manifest(stage, run_id, Config())
    manifest["inputs"] = inputs
    if complete:
        artifacts.commit(root, stage, run_dir, manifest, Config())
    else:
        artifacts.write_failed(run_dir, manifest, RuntimeError("killed"))


def path(root: str, stage: str, run_id: str) -> str:
    return artifacts.stage_dir(root, stage, run_id)


@pytest.fixture
def history(tmp_path: Path) -> tuple[str, Path]:
    """Two weeks of nights, the last with a model whose index failed its recall floor:
    LATEST train is t28 but LATEST index (and the score run that used it) is for t20."""
    root, logs = str(tmp_path / "artifacts"), tmp_path / "logs"
    p = {d: rid(d) for d in (20, 21, 22, 26, 28)}
    for day in (20, 22, 26, 28):
        make_run(root, "preprocess", p[day])
    make_run(root, "preprocess", p[21], complete=False)  # a night killed long ago
    make_run(root, "preprocess", "manual-backfill")  # a run named by hand: never touched
    make_run(root, "preprocess", p[28])  # LATEST again
    make_run(root, "train", rid(18), preprocess_run=rid(18))
    make_run(root, "train", rid(20), preprocess_run=p[20])
    make_run(root, "train", rid(28), preprocess_dir=path(root, "preprocess", p[28]))
    make_run(root, "index", rid(18), model_version=rid(18))
    make_run(root, "index", rid(20), train_dir=path(root, "train", rid(20)),
             model_version=rid(20))
    make_run(root, "index", rid(28), complete=False, model_version=rid(28))  # below the floor
    make_run(root, "score", rid(22))
    make_run(root, "score", rid(26), preprocess_dir=path(root, "preprocess", p[26]),
             train_dir=path(root, "train", rid(20)), index_dir=path(root, "index", rid(20)))
    logs.mkdir()
    for day in (22, 26):
        io.write_text(io.join(root, "nightly", rid(day), "summary.json"), "{}")
        (logs / f"nightly-{rid(day)}.log").write_text("log")
    (logs / "nightly.lock").write_text("")
    tables = io.join(root, "tables")
    io.write_text(io.join(tables, "movielens_recommendations", "run_date=2026-11-26",
                          "part-0.parquet"), "published")
    for night, run in (("2026-11-22", rid(22)), ("2026-11-30", rid(30, 11))):  # failed nights
        io.write_text(io.join(tables, "_staging", "movielens_recommendations",
                              f"run_date={night}-{run}", "part-0.parquet"), "x")
    return root, logs


def test_runs_in_use_follow_the_latest_runs_through_their_inputs(history):
    root, _ = history
    assert runs_in_use(root) == {
        ("preprocess", rid(28)), ("train", rid(28)), ("index", rid(20)), ("score", rid(26)),
        ("train", rid(20)),  # the index's model and the score run's
        ("preprocess", rid(20)),  # that model's histories, two steps from a LATEST
        ("preprocess", rid(26)),  # the score run's histories
    }


def test_prune_keeps_the_newest_and_what_is_in_use_and_a_dry_run_removes_nothing(history):
    root, logs = history
    expected = [
        path(root, "preprocess", rid(21)), path(root, "preprocess", rid(22)),
        path(root, "train", rid(18)), path(root, "index", rid(18)), path(root, "score", rid(22)),
        io.join(root, "nightly", rid(22)), io.join(root, "nightly", rid(26)),
        # a failed night's staged files; the one from an hour ago may be a run in progress
        io.join(root, "tables", "_staging", "movielens_recommendations",
                f"run_date=2026-11-22-{rid(22)}"),
        str(logs / f"nightly-{rid(22)}.log"), str(logs / f"nightly-{rid(26)}.log"),
    ]
    dry = prune(root, 1, log_dir=str(logs), tonight=rid(30), dry_run=True, now=NOW)
    assert dry.removed == expected
    assert all(io.exists(uri) for uri in expected)
    local = [Path(io.local_path(uri)) for uri in expected]
    assert dry.removed_bytes == sum(f.stat().st_size for p in local
                                    for f in ([p] if p.is_file() else p.rglob("*"))
                                    if f.is_file())

    done = prune(root, 1, log_dir=str(logs), tonight=rid(30), now=NOW)
    assert done.removed == expected
    assert not any(io.exists(uri) for uri in expected)
    left = {stage: io.list_dir(io.join(root, stage)) for stage in ("preprocess", "train",
                                                                   "index", "score")}
    assert left == {
        "preprocess": [rid(20), rid(26), rid(28), "LATEST", "manual-backfill"],
        "train": [rid(20), rid(28), "LATEST"],
        "index": [rid(20), rid(28), "LATEST"],  # the failed index is newer than the kept one
        "score": [rid(26), "LATEST"],
    }
    assert sorted(p.name for p in logs.iterdir()) == ["nightly.lock"]
    tables = Path(io.local_path(root)) / "tables"
    assert [p.name for p in (tables / "movielens_recommendations").iterdir()] == [
        "run_date=2026-11-26"]
    assert [p.name for p in (tables / "_staging" / "movielens_recommendations").iterdir()] == [
        f"run_date=2026-11-30-{rid(30, 11)}"]
    for stage in ("preprocess", "train", "index", "score"):  # every LATEST still resolves
        artifacts.verify(artifacts.resolve(root, stage))
    assert prune(root, 1, log_dir=str(logs), tonight=rid(30), now=NOW).removed == []


def test_a_log_directory_shared_by_two_roots_keeps_each_roots_newest_logs(tmp_path):
    """Nightlies of two artifact roots (a staging and a production configuration run from
    one checkout) write into one log directory: each root's pruning counts and removes its
    own logs only, and a log that names no root (empty: its disk was full) counts as
    the pruning root's."""
    prod, staging, logs = str(tmp_path / "prod"), str(tmp_path / "staging"), tmp_path / "logs"
    logs.mkdir()

    def write_log(root: str, run_id: str) -> None:
        log_file = logs / f"nightly-{run_id}.log"
        with open(log_file, "w", encoding="utf-8") as fh:  # as the nightly writes it
            Runner(fh, (), echo=lambda line: None).note(
                log_header(run_id, "2026-11-30", io.normalize_uri(root), str(log_file)))
            fh.write("preprocess: started\n")

    for day in (20, 21, 22):
        write_log(prod, rid(day))
    for hour in range(3, 9):  # staging ran every hour on the 29th, after prod's nights
        write_log(staging, rid(29, hour))
    (logs / f"nightly-{rid(19)}.log").write_text("")
    assert log_root((logs / f"nightly-{rid(20)}.log").read_text().splitlines()[0],
                    rid(20)) == io.normalize_uri(prod)

    done = prune(prod, 2, log_dir=str(logs), tonight=rid(30), now=NOW)
    assert done.removed == [str(logs / f"nightly-{r}.log") for r in (rid(19), rid(20), rid(21))]
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"nightly-{rid(22)}.log"] + [f"nightly-{rid(29, h)}.log" for h in range(3, 9)])

    done = prune(staging, 2, log_dir=str(logs), tonight=rid(30, 9), now=NOW)
    assert done.removed == [str(logs / f"nightly-{rid(29, h)}.log") for h in range(3, 8)]
    assert sorted(p.name for p in logs.iterdir()) == [f"nightly-{rid(22)}.log",
                                                      f"nightly-{rid(29, 8)}.log"]


def test_zips_extracted_for_earlier_nights_go_and_the_latest_runs_stays(tmp_path):
    """A nightly whose input is a zip that changes upstream extracts a new one each
    night (about 1 GiB at ml-25m scale), and nothing removed them."""
    root = str(tmp_path / "artifacts")
    inputs = tmp_path / "artifacts" / "_inputs"

    def extraction(name: str, marker: str | None) -> str:
        (inputs / name).mkdir(parents=True)
        (inputs / name / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
        if marker is not None:
            (inputs / name / "_EXTRACTED").write_text(marker)
        return io.normalize_uri(inputs / name)

    latest = extraction("ml-25m-aaaaaaaaaaaa", "aaaa 20261120T020000Z\n")  # old, but read
    make_run(root, "preprocess", rid(29), files={"ratings": {
        "uri": f"{latest}/ratings.csv", "size": 33, "md5": "x"}})
    extraction("ml-25m-bbbbbbbbbbbb", "bbbb 20261128T020000Z\n")  # an earlier night's
    extraction("ml-25m-cccccccccccc", "cccc\n")  # marked before markers said when
    extraction("ml-25m-dddddddddddd", "dddd 20261130T110000Z\n")  # a run by hand, an hour ago
    extraction("ml-25m-eeeeeeeeeeee", None)  # being extracted now
    done = prune(root, 1, tonight=rid(30), now=NOW)
    assert done.removed == [io.normalize_uri(inputs / f"ml-25m-{c * 12}") for c in "bc"]
    assert sorted(p.name for p in inputs.iterdir()) == [
        f"ml-25m-{c * 12}" for c in "ade"]
    header = len("userId,movieId,rating,timestamp\n")
    assert done.removed_bytes == 2 * header + len("bbbb 20261128T020000Z\n") + len("cccc\n")


def test_an_incomplete_run_started_within_the_grace_period_is_left_alone(tmp_path):
    root = str(tmp_path / "artifacts")
    make_run(root, "train", rid(20))
    make_run(root, "train", rid(30, 10), complete=False)  # a job started by hand, 2 h ago
    make_run(root, "train", rid(30, 11))
    kept = prune(root, 1, now=NOW)
    assert kept.removed == [path(root, "train", rid(20))]
    gone = prune(root, 1, now=NOW, grace_hours=1)
    assert gone.removed == [path(root, "train", rid(30, 10))]


def test_a_claim_left_by_a_run_killed_on_another_host_goes_once_the_run_is_a_day_old(tmp_path):
    """A run on this host takes over a claim whose process is gone; another host's claim
    used to stay for ever, and stop a later run of that night."""
    root = str(tmp_path / "artifacts")
    make_run(root, "score", rid(20))
    table = io.join(root, "tables", "movielens_recommendations")
    claims = {}
    for night, run in (("2026-11-22", rid(22)), ("2026-11-30", rid(30, 11))):
        claims[night] = claim_uri(table, night)
        owner = {**claim._owner(run), "host": "another-host"}
        io.write_text(claims[night], json.dumps(owner))
    unreadable = claim_uri(table, "2026-11-23")
    io.write_text(unreadable, "{not json")  # whose run is not known: stays
    killed = f"{claim_uri(table, '2026-11-24')}.{rid(24)}.0a1b2c.tmp"  # killed while claiming
    io.write_text(killed, "{}")
    assert claim.read_claim(claims["2026-11-22"])["host"] == "another-host"
    done = prune(root, 1, now=NOW)
    assert done.removed == sorted([claims["2026-11-22"], killed])
    staging = Path(io.local_path(root)) / "tables" / "_staging" / "movielens_recommendations"
    assert sorted(p.name for p in staging.iterdir()) == [
        "run_date=2026-11-23.claim", "run_date=2026-11-30.claim"]  # an hour old: may run


def test_a_stopped_pruning_removes_whole_runs_up_to_the_stop_and_says_how_many_are_left(history):
    root, logs = history
    planned = prune(root, 1, log_dir=str(logs), tonight=rid(30), dry_run=True, now=NOW).removed
    asked = iter([False, False, True])
    done = prune(root, 1, log_dir=str(logs), tonight=rid(30), now=NOW, stop=lambda: next(asked))
    assert done.removed == planned[:2] and done.stopped and done.left == len(planned) - 2
    assert not any(io.exists(uri) for uri in planned[:2])
    assert all(io.exists(uri) for uri in planned[2:])
    assert f"stopped with {len(planned) - 2} more to remove" in done.describe()
    # the next pruning removes the rest
    assert prune(root, 1, log_dir=str(logs), tonight=rid(30), now=NOW).removed == planned[2:]


def test_the_nightly_stops_pruning_once_it_has_a_signal_and_keeps_what_is_left(history):
    from io import StringIO

    from recsys.config import NightlyConfig
    from recsys.nightly import Runner, _prune

    root, logs = history
    planned = prune(root, 1, log_dir=str(logs), tonight=rid(30), dry_run=True).removed
    runner = Runner(StringIO(), echo=lambda line: None)
    runner.stopped_by = "SIGTERM"  # what Runner.stop records when no stage is running
    config = Config(nightly=NightlyConfig(keep_runs=1, log_dir=str(logs)))
    out = _prune(config, io.normalize_uri(root), runner, rid(30))
    assert out["removed"] == [] and out["stopped"] == (
        f"by SIGTERM with {len(planned)} more to remove; the next good night removes them")
    assert all(io.exists(uri) for uri in planned)


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune(str(tmp_path), 0)


def test_the_job_lists_a_dry_run_and_refuses_keep_zero(history, job_env):
    root, logs = history
    job = [sys.executable, str(REPO / "jobs" / "prune_artifacts.py"), "--artifact-root", root,
           "--set", f"nightly.log_dir={logs}"]
    out = subprocess.run([*job, "--keep", "2", "--dry-run"], env=job_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"would remove {path(root, 'train', rid(18))}" in out.stdout
    assert f"would remove {path(root, 'preprocess', rid(22))}" in out.stdout
    assert f"would remove {path(root, 'index', rid(18))}" not in out.stdout  # 2 kept
    assert "would remove 5 old runs and logs" in out.stdout  # both staged nights: > 1 day old
    assert io.exists(path(root, "train", rid(18)))
    bad = subprocess.run([*job, "--keep", "0"], env=job_env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--keep must be >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr
    logs_before = sorted(os.listdir(logs))
    typo = subprocess.run([sys.executable, str(REPO / "jobs" / "prune_artifacts.py"),
                           "--artifact-root", f"{root}-typo", "--set", f"nightly.log_dir={logs}",
                           "--keep", "1"], env=job_env, capture_output=True, text=True,
                          timeout=120)
    assert typo.returncode == 2 and f"artifact root {root}-typo does not exist" in typo.stderr
    assert sorted(os.listdir(logs)) == logs_before  # the logs beside the real root are kept


def test_a_run_that_cannot_be_removed_is_named_and_the_others_go(history, job_env):
    """A stage directory of another user (here: no write permission, binding through
    ``unshare --user`` even for root): the job used to stop at that run with pyarrow's
    PermissionError traceback and remove nothing after it."""
    root, logs = history
    planned = prune(root, 1, log_dir=str(logs), dry_run=True).removed  # as the job prunes
    refused = path(root, "train", rid(18))
    stage_dir = Path(io.local_path(io.join(root, "train")))
    stage_dir.chmod(0o555)
    try:
        out = run_unprivileged(
            [sys.executable, str(REPO / "jobs" / "prune_artifacts.py"), "--artifact-root", root,
             "--set", f"nightly.log_dir={logs}", "--keep", "1"], env=job_env)
    finally:
        stage_dir.chmod(0o755)
    assert out.returncode == 4, out.stderr[-3000:]
    assert f"prune_artifacts: could not remove {refused} (Permission denied)" in out.stderr
    assert "Traceback" not in out.stderr
    assert "1 could not be removed" in out.stdout
    assert [uri for uri in planned if uri != refused and io.exists(uri)] == [], out.stdout
    # what is left of it is an incomplete run (no _SUCCESS), not a completed one with
    # files missing; the next pruning removes it
    assert not io.exists(io.join(refused, artifacts.SUCCESS))
    assert prune(root, 1, log_dir=str(logs)).removed == [refused]


def test_an_unreadable_manifest_of_a_run_in_use_stops_the_pruning_before_anything_goes(history):
    root, logs = history
    latest_index = artifacts.resolve(root, "index")
    io.write_text(io.join(latest_index, artifacts.MANIFEST), '{"inputs": {"train_')
    with pytest.raises(ValueError):
        prune(root, 1, log_dir=str(logs), now=NOW)
    assert io.exists(path(root, "train", rid(18))) and io.exists(path(root, "score", rid(22)))


def test_the_nightly_notes_a_pruning_that_failed_and_keeps_the_night_good(history):
    from io import StringIO

    from recsys.config import NightlyConfig
    from recsys.nightly import Runner, _prune

    root, logs = history
    io.write_text(io.join(artifacts.resolve(root, "score"), artifacts.MANIFEST), "not json")
    lines: list[str] = []
    runner = Runner(StringIO(), echo=lines.append)
    config = Config(nightly=NightlyConfig(keep_runs=1, log_dir=str(logs)))
    out = _prune(config, io.normalize_uri(root), runner, rid(30))
    assert set(out) == {"error"} and any("retention: could not prune" in ln for ln in lines)
    assert io.exists(path(root, "train", rid(18)))


def test_the_nightly_notes_each_run_it_could_not_remove_and_removes_the_others(history,
                                                                               monkeypatch):
    """The refusal itself is the filesystem's in the job's test above (permission bits);
    here one is raised by hand, to see what the nightly's summary and log say of it."""
    from io import StringIO

    from recsys import retention
    from recsys.config import NightlyConfig
    from recsys.nightly import Runner, _prune

    root, logs = history
    refused = path(root, "train", rid(18))
    remove = retention._remove

    def refuse_one(uri: str) -> None:
        if uri == refused:
            raise PermissionError(13, "Permission denied", io.local_path(uri))
        remove(uri)

    monkeypatch.setattr(retention, "_remove", refuse_one)
    lines: list[str] = []
    config = Config(nightly=NightlyConfig(keep_runs=1, log_dir=str(logs)))
    out = _prune(config, io.normalize_uri(root), Runner(StringIO(), echo=lines.append), rid(30))
    assert out["failed"] == [f"{refused} (Permission denied)"]
    assert refused not in out["removed"] and path(root, "score", rid(22)) in out["removed"]
    assert any(ln.endswith(f"retention: could not remove {refused} (Permission denied)")
               for ln in lines)
    assert any("1 could not be removed" in ln for ln in lines)
    assert io.exists(refused) and not io.exists(path(root, "score", rid(22)))
