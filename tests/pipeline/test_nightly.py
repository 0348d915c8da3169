"""The nightly pipeline for cron, end to end on ml-latest-small: real jobs, real Spark.

One module-scoped first night; the tests after it run more nights against the same
artifact root and tables, as cron would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys import io
from recsys.nightly import EXIT_LOCKED, Lock
from tests.conftest import REPO, SMALL
from tests.filesystems import run_on_small_fs

NIGHTLY = str(REPO / "jobs" / "nightly.py")


def env() -> dict[str, str]:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                TF_USE_LEGACY_KERAS="1")


def args(base: Path, run_date: str, *extra: str, source: Path = SMALL) -> list[str]:
    return [sys.executable, NIGHTLY, "--conf-file", str(REPO / "conf" / "default.toml"),
            "--artifact-root", str(base / "artifacts"), "--input", str(source),
            "--run-date", run_date, "--set", f"nightly.log_dir={base / 'logs'}",
            "--set", f"spark.metastore_dir={base / 'metastore'}",
            "--set", f"spark.scratch_dir={base / 'scratch'}",
            "--set", "spark.driver_memory=2g", "--set", "train.epochs=2",
            "--set", f"nightly.class_archive={base / 'jvm' / 'score.jsa'}", *extra]


LATER = ("--set", "nightly.evaluate=false")  # the first night evaluates; the rest need not


def nightly(base: Path, run_date: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(args(base, run_date, *extra), env=env(), capture_output=True,
                          text=True, timeout=1200, cwd=base)


def summary(base: Path) -> dict:
    runs = sorted((base / "artifacts" / "nightly").iterdir())
    return json.loads((runs[-1] / "summary.json").read_text())


def night(base: Path, run_date: str) -> Path:
    return base / "artifacts" / "tables" / "movielens_recommendations" / f"run_date={run_date}"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def first_night(tmp_path_factory):
    base = tmp_path_factory.mktemp("nightly")
    done = nightly(base, "2026-11-20")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return base, done


def test_a_first_night_runs_every_stage_and_publishes(first_night):
    base, done = first_night
    s = summary(base)
    status = {st["name"]: st["status"] for st in s["stages"]}
    assert set(status.values()) == {"ok"}, status
    score = next(st for st in s["stages"] if st["name"] == "score")
    assert score["details"]["counts"]["users"] == 610
    assert pq.read_table(night(base, "2026-11-20")).num_rows == 610
    assert "summary of run" in done.stdout and "610 users x top 100" in done.stdout
    log = Path(s["log_file"])
    assert log.parent == base / "logs"
    text = log.read_text()
    assert "score_all_users: 610 users" in text and "preprocess: ok" in text  # stage output kept
    assert not (base / "scratch").exists()  # the run's scratch went with it (and the root)


def test_the_first_night_evaluates_every_protocol_against_the_baselines(first_night):
    base, done = first_night
    evaluate = next(st for st in summary(base)["stages"] if st["name"] == "evaluate")
    run = base / "artifacts" / "evaluate" / evaluate["run_id"]
    metrics = json.loads((run / "metrics.json").read_text())
    by_name = {p["name"]: p["models"] for p in metrics["protocols"]}
    assert set(by_name) == {"held-out users (test)", "temporal next-item", "random split"}
    assert set(by_name["held-out users (test)"]) == {"two-tower", "most-popular", "ALS", "EASE"}
    assert set(by_name["random split"]) == {"two-tower (retrained on the 80%)", "most-popular",
                                            "ALS", "EASE"}
    for models in by_name.values():
        for values in models.values():
            assert all(0.0 <= v <= 1.0 for v in values.values()), values
    # every model learned something: far above what a random ranking finds
    held_out = by_name["held-out users (test)"]
    assert all(v["recall@20"] > 0.05 for v in held_out.values()), held_out
    assert len(metrics["als_tuning"]["tried"]) == 4
    assert len(metrics["recall_curves"]["two-tower"]) == 100
    report = (run / "report.md").read_text()
    for png in ("recall_at_k.png", "popularity.png", "movie_embeddings.png"):
        assert (run / png).stat().st_size > 5_000 and f"]({png})" in report
    assert "| EASE |" in report and "## temporal next-item" in report
    assert metrics["not_run"] == [] and "Not run:" not in report
    # each protocol compares the two-tower model with every baseline, user by user; the
    # bootstrap's difference is the one of the metrics table, inside its interval
    for proto in metrics["protocols"]:
        models, first = proto["models"], next(iter(proto["models"]))
        pairs = {(c["metric"], c["baseline"]) for c in proto["comparisons"]}
        assert {b for _, b in pairs} == set(models) - {first}, pairs
        for c in proto["comparisons"]:
            assert c["difference"] == pytest.approx(
                models[first][c["metric"]] - models[c["baseline"]][c["metric"]], abs=1e-9)
            assert c["low"] <= c["difference"] <= c["high"]
    assert "95% paired bootstrap interval" in report and "| recall@20 | ALS |" in report
    assert "report " in done.stdout and "held-out users (test): two-tower" in done.stdout
    # the summary gives each protocol's quality-goal metric, with the report's figures
    random = by_name["random split"]
    assert f"random split: two-tower (retrained on the 80%) " \
           f"{random['two-tower (retrained on the 80%)']['top10_accuracy']:.4f}, most-popular " \
           f"{random['most-popular']['top10_accuracy']:.4f}," in done.stdout
    assert "(top10_accuracy)" in done.stdout and "(hr@10)" in done.stdout


def test_a_young_model_is_not_retrained_and_the_next_night_publishes(first_night):
    base, _ = first_night
    first = summary(base)
    runs = {st["name"]: st["run_id"] for st in first["stages"]}
    done = nightly(base, "2026-11-21", "--set", "nightly.keep_runs=1")
    assert done.returncode == 0, done.stdout[-4000:]
    status = {st["name"]: (st["status"], st["reason"]) for st in summary(base)["stages"]}
    assert status["train"][0] == "skipped" and "h old" in status["train"][1]
    assert status["index"][0] == "skipped" and status["score"][0] == "ok"
    # the model is evaluated on the preprocess run it was trained on: done the first night
    assert status["evaluate"] == (
        "skipped", f"model {runs['train']} is evaluated by run {runs['evaluate']}")
    assert pq.read_table(night(base, "2026-11-21")).num_rows == 610
    # the first night wrote the score driver's class archive; this one mapped it, with the
    # quick JIT tier (nightly.score_java_options), in the score stage only
    assert (base / "jvm" / "score.jsa").stat().st_size > 1_000_000
    commands = [line for line in Path(summary(base)["log_file"]).read_text().splitlines()
                if line.startswith("$ ")]
    score = next(c for c in commands if "score_all_users.py" in c)
    assert f"-XX:SharedArchiveFile={base / 'jvm' / 'score.jsa'}" in score
    assert "-XX:TieredStopAtLevel=1" in score
    assert not any("TieredStopAtLevel" in c for c in commands if c != score)
    # retention (keep_runs=1): the first night's score run, summary and log are gone; its
    # preprocess run stays, in use by the model it trained (not retrained tonight), and its
    # evaluate run is still the latest (tonight's evaluate was skipped)
    art = base / "artifacts"
    assert sorted(summary(base)["pruned"]["removed"]) == sorted([
        io.join(str(art), "score", runs["score"]), io.join(str(art), "nightly", first["run_id"]),
        first["log_file"]])
    assert not (art / "score" / runs["score"]).exists() and not Path(first["log_file"]).exists()
    for stage in ("preprocess", "train", "index", "evaluate"):
        assert (art / stage / runs[stage] / "_SUCCESS").is_file(), stage
    assert len(list((art / "preprocess").glob("2026*"))) == 2
    assert "retention: kept the 1 newest runs" in done.stdout


def test_a_second_run_while_one_holds_the_lock_exits_with_its_own_code(first_night):
    base, _ = first_night
    with Lock(str(base / "logs" / "nightly.lock")):
        started = time.time()
        done = nightly(base, "2026-11-22", *LATER)
    assert done.returncode == EXIT_LOCKED
    assert "another nightly run holds" in done.stderr and f"pid {os.getpid()}" in done.stderr
    assert time.time() - started < 60  # refused up front: nothing ran
    assert not night(base, "2026-11-22").exists()


JAVA_FAILURE = """
import sys
print("WARNING: Using incubator modules: jdk.incubator.vector")
print('Exception in thread "main" org.apache.spark.SparkException: Master must either be '
      'yarn or start with spark, k8s, or local')
for i in range(40):
    print(f"\\tat org.apache.spark.deploy.SparkSubmit.f{i}(SparkSubmit.scala:{i})")
print("\\t... 12 more")
sys.exit(1)
"""


def test_a_stage_that_fails_in_the_jvm_is_said_by_its_exception_not_a_stack_frame():
    from io import StringIO

    from recsys.nightly import Runner, _failure_reason

    log = StringIO()
    code, tail = Runner(log, echo=lambda line: None).run([sys.executable, "-c", JAVA_FAILURE],
                                                          os.environ.copy())
    assert code == 1 and "SparkSubmit.f39" in log.getvalue()  # the log keeps every line
    assert _failure_reason(tail, "preprocess") == (
        'Exception in thread "main" org.apache.spark.SparkException: Master must either be '
        'yarn or start with spark, k8s, or local')
    # the job's own line wins over a library's exception; with neither, the last line
    assert _failure_reason(["ValueError: x", "preprocess: input data error: y", "z"],
                           "preprocess") == "preprocess: input data error: y"
    assert _failure_reason(["a", "b"], "preprocess") == "b" and _failure_reason([], "x") == ""


def test_a_signal_between_stages_stops_before_the_next_and_the_summary_is_written(tmp_path):
    """SIGTERM while no stage runs (here: the night's first line, before preprocess) used to
    leave the run by a KeyboardInterrupt with no summary and an unfinished log."""
    from recsys.config import Config, NightlyConfig
    from recsys.nightly import EXIT_INTERRUPTED, run_nightly

    config = Config(artifact_root=str(tmp_path / "artifacts"),
                    nightly=NightlyConfig(log_dir=str(tmp_path / "logs"))).with_input(str(SMALL))
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if "run_date=2026-11-22" in line:
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread, as cron's would be

    result = run_nightly(config, run_date="2026-11-22", echo=echo)
    assert result.exit_code == EXIT_INTERRUPTED and result.stopped_by == "SIGTERM"
    assert [st.status for st in result.stages] == ["not run"] * 5
    assert any("received SIGTERM: stopping" in ln for ln in lines)
    assert any("preprocess: not started (SIGTERM)" in ln for ln in lines)
    assert "STOPPED by SIGTERM, exit code 130" in "\n".join(lines)
    written = json.loads(Path(io.local_path(result.summary_uri)).read_text())
    assert written["exit_code"] == 130 and written["stopped_by"] == "SIGTERM"
    assert written["pruned"] == {"skipped": "the night was stopped: every run is kept to be read"}
    assert not (tmp_path / "artifacts" / "preprocess").exists()
    log = Path(result.log_file).read_text()
    assert "summary of run" in log and "STOPPED by SIGTERM" in log


def test_a_log_that_cannot_be_written_sends_the_output_to_the_console_instead():
    from recsys.nightly import Runner, _open_log

    lines: list[str] = []
    with _open_log("/dev/full") as log:  # every write to it fails with ENOSPC
        runner = Runner(log, echo=lines.append)
        runner.note("run r1: started")
        code, _ = runner.run([sys.executable, "-c", "print('stage line 1'); print('line 2')"],
                             os.environ.copy())
    assert code == 0 and runner.log_lost == "No space left on device"
    assert lines[0].endswith("cannot write the log file /dev/full (No space left on device): "
                             "the rest of this run's output, its stages' included, comes "
                             "here instead")
    assert lines[1].endswith("] run r1: started")
    assert lines[2].startswith("$ ") and lines[3:] == ["stage line 1", "line 2"]


def test_a_full_disk_under_the_logs_does_not_stop_the_night(first_night, tmp_path):
    """The log directory's disk is full (here its own small one, filled before the run):
    the night used to stop at its first line with exit 1 and a traceback."""
    base, _ = first_night
    logs = tmp_path / "logs"
    done = run_on_small_fs([*args(base, "2026-11-24", *LATER), "--set", f"nightly.log_dir={logs}"],
                           logs, "40k", prepare="head -c 36000 /dev/zero > filler",
                           env=env(), timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cannot write the log file" in done.stdout and "No space left on device" in done.stdout
    assert "score: ok" in done.stdout and "(stops short: No space left on device; the rest " \
        "is above)" in done.stdout
    # a stage's own lines, on the console
    assert "score_all_users: 610 users x top 100" in done.stdout
    assert pq.read_table(night(base, "2026-11-24")).num_rows == 610
    assert summary(base)["log_lost"] == "No space left on device"


@pytest.mark.parametrize("key", ["nightly.log_dir", "nightly.lock_file"])
def test_a_log_or_lock_place_that_cannot_be_written_is_a_configuration_error(tmp_path, key):
    (tmp_path / "a-file").write_text("")
    done = subprocess.run(
        [*args(tmp_path, "2026-11-22"), "--set", f"{key}={tmp_path / 'a-file' / 'x'}"],
        env=env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "nightly: configuration error: cannot " in done.stderr
    assert f"set {key}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()


def test_a_failing_stage_is_named_by_the_exit_code(first_night, tmp_path):
    base, _ = first_night
    done = subprocess.run(args(base, "2026-11-22", source=tmp_path / "missing-release"),
                          env=env(), capture_output=True, text=True, timeout=600, cwd=base)
    assert done.returncode == 11, done.stdout[-3000:]
    stages = {st["name"]: st for st in summary(base)["stages"]}
    assert stages["preprocess"]["status"] == "failed" and stages["preprocess"]["exit_code"] == 3
    assert "input data error" in stages["preprocess"]["reason"]
    assert stages["score"]["status"] == "not run"
    assert not night(base, "2026-11-22").exists()


def test_killed_while_scoring_the_published_nights_stay_and_the_next_run_completes(first_night):
    base, _ = first_night
    before = snapshot(night(base, "2026-11-21"))
    proc = subprocess.Popen(args(base, "2026-11-21", *LATER), env=env(), cwd=base,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # the nightly echoes each stage as it starts
        seen.append(line)
        if "score: started" in line:
            break
    staging = base / "artifacts" / "tables" / "_staging" / "movielens_recommendations"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if staging.is_dir() and any(staging.iterdir()):  # scoring is writing tonight's files
            break
        time.sleep(0.2)
    assert proc.poll() is None, "".join(seen)[-3000:]
    # the stage's Spark scratch is in the run's own directory, not in /tmp
    assert [p.parent.parent.name for p in (base / "scratch").glob("*/blockmgr-*")] == \
        ["scratch"], list((base / "scratch").rglob("*"))[:20]
    # so are the files its JVM makes in its temporary directory (Spark's spark-* ones)
    assert list((base / "scratch").glob("*/spark-*")), list((base / "scratch").glob("*/*"))
    proc.send_signal(signal.SIGTERM)  # what cron / systemd send first
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest[-3000:]
    assert not (base / "scratch").exists()  # the stopped run removed its scratch
    assert snapshot(night(base, "2026-11-21")) == before
    assert pq.read_table(night(base, "2026-11-20")).num_rows == 610
    again = nightly(base, "2026-11-21", *LATER)
    assert again.returncode == 0, again.stdout[-3000:]
    assert pq.read_table(night(base, "2026-11-21")).num_rows == 610


def test_the_score_stage_writes_the_class_archive_once_then_maps_it(tmp_path):
    from recsys.config import Config, NightlyConfig
    from recsys.nightly import stage_commands

    archive = tmp_path / "jvm" / "score.jsa"

    def java_options(config: Config) -> dict[str, str]:
        commands = stage_commands(config, "c.toml", "2026-11-20", "r1")
        return {stage: (cmd[cmd.index("--driver-java-options") + 1]
                        if "--driver-java-options" in cmd else "")
                for stage, cmd in commands.items()}

    config = Config(nightly=NightlyConfig(class_archive=str(archive)))
    first = java_options(config)
    assert f"-XX:ArchiveClassesAtExit={archive}" in first["score"]
    assert archive.parent.is_dir()  # the JVM writes the file, not the directory
    assert "-XX:TieredStopAtLevel=1" in first["score"]
    assert "Archive" not in first["preprocess"] + first["evaluate"]
    archive.write_bytes(b"x")
    assert f"-XX:SharedArchiveFile={archive}" in java_options(config)["score"]
    plain = java_options(Config(nightly=NightlyConfig(score_java_options="")))
    assert "XX:" not in plain["score"]
    # the user's own --driver-java-options stand unchanged for every stage
    own = Config(nightly=NightlyConfig(spark_submit_args="--driver-java-options -Dx=1",
                                       class_archive=str(archive)))
    assert set(java_options(own).values()) - {""} == {"-Dx=1"}


def test_the_spark_stages_run_on_the_users_master_given_either_way():
    from recsys.config import Config, NightlyConfig, SparkConfig
    from recsys.nightly import stage_commands, stage_master

    def masters(args: str) -> tuple[str, list[list[str]]]:
        config = Config(nightly=NightlyConfig(spark_submit_args=args),
                        spark=SparkConfig(master="local[2]"))
        commands = stage_commands(config, "c.toml", "2026-11-20", "r1")
        return stage_master(config), [[a for a in commands[s] if "master" in a or
                                       a in ("yarn", "local[2]")] for s in ("preprocess", "score")]

    assert masters("") == ("local[2]", [["--master", "local[2]"]] * 2)
    assert masters("--master yarn") == ("yarn", [["--master", "yarn"]] * 2)
    # not a second --master after the user's (spark-submit would take the last one)
    assert masters("--master=yarn") == ("yarn", [["--master=yarn"]] * 2)


def test_a_model_from_the_future_is_retrained_not_kept_until_the_clock_catches_up(tmp_path):
    """A model that finished later than now by this machine's clock (the clock set back,
    a run from a machine whose clock was ahead) was skipped night after night: "latest
    model is -2160.0 h old"."""
    import datetime as dt

    from recsys import artifacts
    from recsys.config import Config
    from recsys.nightly import train_skip

    root = str(tmp_path / "art")
    run_dir = artifacts.stage_dir(root, "train", "r1")
    io.write_text(io.join(run_dir, "model.bin"), "x")
    artifacts.commit(root, "train", run_dir, artifacts.Manifest("train", "r1", Config()),
                     Config())

    def finished(hours_ago: float) -> None:
        manifest = artifacts.read_manifest(run_dir)
        manifest["finished_at"] = (dt.datetime.now(dt.timezone.utc)
                                   - dt.timedelta(hours=hours_ago)).isoformat()
        io.write_text(io.join(run_dir, artifacts.MANIFEST), json.dumps(manifest))

    finished(2)
    skip, note = train_skip(root, 24)
    assert skip.startswith("latest model is 2.0 h old (< nightly.max_model_age_hours = 24)")
    assert note == ""
    finished(30)
    assert train_skip(root, 24) == ("", "")
    finished(-24 * 90)  # ninety days ahead
    skip, note = train_skip(root, 24)
    assert skip == "" and note == (
        "the latest model finished 2160.0 h from now by this machine's clock (a clock set "
        "back since?): its age is unknown, so it is retrained")
    finished(-0.01)  # seconds ahead: two clocks that disagree a little
    assert train_skip(root, 24)[0].startswith("latest model is 0.0 h old")
