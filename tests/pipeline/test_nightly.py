"""The nightly pipeline for cron, end to end on ml-latest-small: real jobs, real Spark.

One module-scoped first night; the tests after it run more nights against the same
artifact root and tables, as cron would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys import io
from recsys.nightly import EXIT_LOCKED, Lock, log_root
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
    # its first line names the root, which retention reads in a log directory others share
    assert log_root(text.splitlines()[0], s["run_id"]) == io.normalize_uri(base / "artifacts")
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



def test_a_stage_that_hangs_is_stopped_at_the_time_limit_and_frees_the_lock(tmp_path):
    """A read that never returns (here ratings.csv is a named pipe no one writes, as a
    hung network mount behaves) kept the stage, and with it the lock, for good: every
    later night exited 10. ``nightly.stage_timeout_hours`` stops it and fails the night
    with the stage's code."""
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(SMALL / "movies.csv", release / "movies.csv")
    os.mkfifo(release / "ratings.csv")
    done = subprocess.run(args(tmp_path, "2026-11-20", *LATER, "--set",
                               "nightly.stage_timeout_hours=0.002", "--set",
                               "nightly.stop_grace_seconds=5", source=release),
                          env=env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 11, done.stdout[-3000:]  # preprocess failed
    stages = {st["name"]: st for st in summary(tmp_path)["stages"]}
    assert stages["preprocess"]["status"] == "failed"
    assert stages["preprocess"]["reason"].startswith(
        "timed out: still running after nightly.stage_timeout_hours = 0.002, and stopped")
    assert stages["train"]["status"] == "not run"
    # the job's Python process sits in the read, where its SIGTERM handler cannot run,
    # after the driver JVM above it has exited: it is the rest of the group that needs the
    # SIGKILL, 5 s later
    assert 12.2 <= stages["preprocess"]["wall_s"] < 60
    assert "the running stage passed nightly.stage_timeout_hours = 0.002: stopping it " \
        "(SIGTERM; SIGKILL 5 s later)" in Path(summary(tmp_path)["log_file"]).read_text()
    with Lock(str(tmp_path / "logs" / "nightly.lock")):  # free: the next night can run
        pass
    left = [pid for pid in os.listdir("/proc") if pid.isdigit()
            and str(tmp_path).encode() in _cmdline(pid)]
    assert left == [], [_cmdline(pid) for pid in left]


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


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


def _without_movies(source: Path, target: Path, movies: set[str]) -> None:
    """A copy of the release ``source`` without ``movies`` (raw ids) and their rows."""
    target.mkdir()
    for name, field in (("movies.csv", 0), ("links.csv", 0), ("ratings.csv", 1),
                        ("tags.csv", 1)):
        lines = (source / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (target / name).write_text(
            "".join(lines[:1] + [x for x in lines[1:] if x.split(",")[field] not in movies]),
            encoding="utf-8")
    (target / "README.txt").write_text((source / "README.txt").read_text(encoding="utf-8"))


def test_a_young_model_is_retrained_when_the_catalog_changed(first_night, tmp_path):
    """A young model was kept night after night when the release changed under it: its
    index holds the catalog it was trained on, so movies gone from the release were still
    recommended (and new ones never were) until the model aged out."""
    base, _ = first_night
    gone = [line.split(",")[0] for line in
            (SMALL / "movies.csv").read_text(encoding="utf-8").splitlines()[-20:]]
    _without_movies(SMALL, tmp_path / "release", set(gone))
    done = subprocess.run(args(base, "2026-11-23", *LATER, source=tmp_path / "release"),
                          env=env(), capture_output=True, text=True, timeout=1200, cwd=base)
    assert done.returncode == 0, done.stdout[-4000:]
    stages = {st["name"]: st for st in summary(base)["stages"]}
    shown = ", ".join(gone[:5])
    why = (f"tonight's catalog lacks 20 movies of the latest model's ({shown}, ...): the "
           "model is retrained")
    assert (stages["train"]["status"], stages["train"]["reason"]) == ("ok", why)
    assert f"train: {why}" in done.stdout
    assert stages["index"]["status"] == "ok" and stages["score"]["status"] == "ok"
    recommended = pq.read_table(night(base, "2026-11-23")).column("recommendations")
    movies = {r["movie_id"] for row in recommended.to_pylist() for r in row}
    assert len(movies) > 100 and not movies & {int(m) for m in gone}


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


def _run(root: str, stage: str, run_id: str, movies: list[int], *, table: str,
         users: list[int] | None = None, files: dict[str, str] | None = None,
         **manifest_fields) -> str:
    """A committed run of ``stage`` whose ``table`` holds ``movie_id`` ``movies``, and
    ``user_id`` ``users`` in the table ``histories`` (preprocess) or ``vocab/users.parquet``
    (train), with text ``files`` (name: content)."""
    import pyarrow as pa

    from recsys import artifacts
    from recsys.config import Config

    run_dir = os.path.join(root, stage, run_id)
    os.makedirs(os.path.join(run_dir, table))
    pq.write_table(pa.table({"movie_id": pa.array(movies, pa.int32())}),
                   os.path.join(run_dir, table, "part-00000.parquet"))
    if users is not None:
        where = "histories/part-00000.parquet" if stage == "preprocess" else "vocab/users.parquet"
        os.makedirs(os.path.dirname(os.path.join(run_dir, where)))
        pq.write_table(pa.table({"user_id": pa.array(users, pa.int64())}),
                       os.path.join(run_dir, where))
    for name, text in (files or {}).items():
        with open(os.path.join(run_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    manifest = artifacts.Manifest(stage, run_id, Config())
    for key, value in manifest_fields.items():
        manifest[key] = value
    artifacts.commit(root, stage, run_dir, manifest, Config())
    return run_dir


def _model(root: str, movies: list[int], *, trained_on: str = "p1", run_id: str = "t1",
           users: list[int] | None = None) -> str:
    """A train run: a history model, or an mf one when ``users`` (the ids it embeds)."""
    kind = "history" if users is None else "mf"
    return _run(root, "train", run_id, movies, table="movie_embeddings", users=users,
                files={"model.json": json.dumps({"kind": kind})},
                inputs={"preprocess_run": trained_on})


def _set_times(run_dir: str, *, started_h_ago: float, finished_h_ago: float | None = None) -> None:
    import datetime as dt

    from recsys import artifacts

    now = dt.datetime.now(dt.timezone.utc)
    manifest = artifacts.read_manifest(run_dir)
    manifest["started_at"] = (now - dt.timedelta(hours=started_h_ago)).isoformat()
    if finished_h_ago is not None:
        manifest["finished_at"] = (now - dt.timedelta(hours=finished_h_ago)).isoformat()
    io.write_text(io.join(run_dir, artifacts.MANIFEST), json.dumps(manifest))


def test_a_model_from_the_future_is_retrained_not_kept_until_the_clock_catches_up(tmp_path):
    """A model that started later than now by this machine's clock (the clock set back,
    a run from a machine whose clock was ahead) was skipped night after night: "latest
    model is -2160.0 h old"."""
    from recsys.nightly import train_skip

    root = str(tmp_path / "art")
    _run(root, "preprocess", "p1", [1, 2, 3], table="movies")
    run_dir = _model(root, [1, 2, 3])
    _set_times(run_dir, started_h_ago=2)
    skip, note = train_skip(root, 24)
    assert skip.startswith("latest model is 2.0 h old (< nightly.max_model_age_hours = 24)")
    assert note == ""
    _set_times(run_dir, started_h_ago=30)
    assert train_skip(root, 24) == ("", "")
    _set_times(run_dir, started_h_ago=-24 * 90)  # ninety days ahead
    skip, note = train_skip(root, 24)
    assert skip == "" and note == (
        "the latest model started 2160.0 h from now by this machine's clock (a clock set "
        "back since?): its age is unknown, so it is retrained")
    _set_times(run_dir, started_h_ago=-0.01)  # seconds ahead: two clocks that disagree a little
    assert train_skip(root, 24)[0].startswith("latest model is 0.0 h old")


def test_a_daily_nightly_retrains_a_model_trained_the_night_before(tmp_path):
    """With ``max_model_age_hours = 24`` a nightly that cron starts at the same time each
    day kept last night's model and retrained every other night only: the model's age
    was counted from when its training *finished*, 25 minutes into a full-scale training,
    so at tonight's train stage it was 23.6 h old. It is now counted from the start, less
    an hour's slack for a nightly that reaches its train stage a little earlier than the
    night before (cron's start, a faster preprocess)."""
    from recsys.nightly import age_slack_hours, train_skip

    root = str(tmp_path / "art")
    _run(root, "preprocess", "p1", [1, 2, 3], table="movies")
    run_dir = _model(root, [1, 2, 3])
    # last night's model: training started 24 h ago and took 25 minutes
    _set_times(run_dir, started_h_ago=24.0, finished_h_ago=24.0 - 25 / 60)
    assert train_skip(root, 24) == ("", "")
    # tonight's preprocessing was two minutes faster than last night's
    _set_times(run_dir, started_h_ago=24.0 - 2 / 60, finished_h_ago=23.5)
    assert train_skip(root, 24) == ("", "")
    # a rerun later the same night keeps the model
    _set_times(run_dir, started_h_ago=3, finished_h_ago=2.6)
    assert train_skip(root, 24)[0].startswith("latest model is 3.0 h old")
    # weekly retraining with a daily nightly: the seventh night retrains, not the eighth
    _set_times(run_dir, started_h_ago=24 * 7 - 0.2, finished_h_ago=24 * 7 - 0.6)
    assert train_skip(root, 24 * 7) == ("", "")
    _set_times(run_dir, started_h_ago=24 * 6 - 0.2)
    assert train_skip(root, 24 * 7)[0].startswith("latest model is 143.8 h old")
    # the slack is an hour, a tenth of the age for short ones
    assert [age_slack_hours(h) for h in (24, 168, 6, 1)] == [1.0, 1.0, 0.6, 0.1]
    _set_times(run_dir, started_h_ago=0.8)
    assert train_skip(root, 1)[0].startswith("latest model is 0.8 h old")
    _set_times(run_dir, started_h_ago=0.95)
    assert train_skip(root, 1) == ("", "")


def test_a_young_model_is_retrained_when_tonights_catalog_has_movies_it_cannot_embed(tmp_path):
    """A young model was kept when tonight's catalog had new movies: the index holds the
    movies of the catalog the model was trained on, so the new ones could never be
    recommended until the next training (or movies gone from the catalog still were)."""
    from recsys.nightly import train_skip

    root = str(tmp_path / "art")
    _run(root, "preprocess", "p1", [1, 2, 3], table="movies")
    run_dir = _model(root, [1, 2, 3], trained_on="p1")
    _set_times(run_dir, started_h_ago=2)
    assert train_skip(root, 24)[0].startswith("latest model is 2.0 h old")  # same catalog
    _run(root, "preprocess", "p2", [1, 2, 3], table="movies")  # a new run, the same movies
    assert train_skip(root, 24)[0].startswith("latest model is 2.0 h old")
    _run(root, "preprocess", "p3", [1, 2, 3, *range(10, 17)], table="movies")
    assert train_skip(root, 24) == ("", (
        "tonight's catalog has 7 movies the latest model has no embedding for "
        "(10, 11, 12, 13, 14, ...): the model is retrained"))
    skip, note = train_skip(root, 24, retrain_on_catalog_change=False)
    assert note == "" and skip == (
        "latest model is 2.0 h old (< nightly.max_model_age_hours = 24); --force-train to "
        "retrain; tonight's catalog has 7 movies the latest model has no embedding for "
        "(10, 11, 12, 13, 14, ...), and stays so until the next training "
        "(nightly.retrain_on_catalog_change = false)")
    _run(root, "preprocess", "p4", [1, 3, 4], table="movies")
    assert train_skip(root, 24)[1] == (
        "tonight's catalog has 1 movie the latest model has no embedding for (4) and lacks "
        "1 movie of the latest model's (2): the model is retrained")
    # a model whose embeddings cannot be read is retrained, saying why
    os.remove(os.path.join(run_dir, "movie_embeddings", "part-00000.parquet"))
    skip, note = train_skip(root, 24)
    assert skip == "" and note.startswith("could not compare tonight's catalog and users "
                                          "with the latest model's (") and note.endswith(
        "): it is retrained")


def test_a_young_model_is_retrained_when_tonights_configuration_makes_another(tmp_path):
    """A young model was kept when the configuration had changed since its training (a
    new model.embedding_dim in conf/prod.toml, say): the change took effect only when the
    model aged out, a week later with max_model_age_hours = 168, and no night said so."""
    from recsys import artifacts
    from recsys.config import Config, ModelConfig, TrainConfig
    from recsys.nightly import train_skip

    root = str(tmp_path / "art")
    _run(root, "preprocess", "p1", [1, 2, 3], table="movies")
    run_dir = _model(root, [1, 2, 3], trained_on="p1")  # trained with Config()
    _set_times(run_dir, started_h_ago=2)
    assert train_skip(root, 24, config=Config())[0].startswith("latest model is 2.0 h old")
    # what does not change the model does not retrain it
    same = Config().replace(train=TrainConfig(tensorboard=False, eval_batch_size=64),
                            artifact_root="elsewhere")
    assert train_skip(root, 24, config=same)[0].startswith("latest model is 2.0 h old")
    wider = Config().replace(model=ModelConfig(embedding_dim=128, hidden_dim=128),
                             train=TrainConfig(learning_rate=0.002))
    assert train_skip(root, 24, config=wider) == ("", (
        "tonight's configuration differs from the latest model's in model.embedding_dim "
        "(64, now 128), model.hidden_dim (64, now 128), train.learning_rate (0.001, now "
        "0.002): the model is retrained"))
    # a key the model's run does not know (an older version wrote it) is a change too
    manifest = artifacts.read_manifest(run_dir)
    del manifest["config"]["split"]["seed"]
    io.write_text(io.join(run_dir, artifacts.MANIFEST), json.dumps(manifest))
    assert train_skip(root, 24, config=Config())[1] == (
        "tonight's configuration differs from the latest model's in split.seed (\"absent\", "
        "now 42): the model is retrained")


def test_the_index_and_the_evaluation_are_made_again_when_their_settings_change(tmp_path):
    """Both were made once per model: a new index.similar_movies (or recall floor, or ALS
    grid) reached the tables or the report only with the next model."""
    from recsys.config import Config, EvaluateConfig, IndexConfig
    from recsys.nightly import made_skip

    root = str(tmp_path / "art")
    _run(root, "preprocess", "p1", [1, 2, 3], table="movies")
    _model(root, [1, 2, 3], trained_on="p1")
    assert made_skip(root, "index", Config()) == ("", "")  # none yet
    _run(root, "index", "i1", [1, 2, 3], table="similar_movies",
         inputs={"model_version": "t1"})
    _run(root, "evaluate", "e1", [1, 2, 3], table="metrics", inputs={"model_version": "t1"})
    assert made_skip(root, "index", Config()) == ("index i1 is built for model t1", "")
    assert made_skip(root, "evaluate", Config()) == ("model t1 is evaluated by run e1", "")
    more = Config().replace(index=IndexConfig(similar_movies=50),
                            evaluate=EvaluateConfig(als_ranks=(32, 64)))
    assert made_skip(root, "index", more) == ("", (
        "tonight's configuration differs from the latest index's in index.similar_movies "
        "(20, now 50): it is made again for model t1"))
    assert made_skip(root, "evaluate", more) == ("", (
        "tonight's configuration differs from the latest evaluation's in evaluate.als_ranks "
        "([64], now [32, 64]): it is made again for model t1"))
    # another section's change is not theirs
    other = Config().replace(index=IndexConfig(), evaluate=EvaluateConfig(),
                             artifact_root="elsewhere")
    assert made_skip(root, "index", other)[0] == "index i1 is built for model t1"
    # a new model: both are made for it, whatever the settings
    _model(root, [1, 2, 3], trained_on="p1", run_id="t2")
    assert made_skip(root, "index", Config()) == ("", "")
    assert made_skip(root, "evaluate", Config()) == ("", "")


def test_a_young_mf_model_is_retrained_when_tonight_has_users_it_cannot_embed(tmp_path):
    """An mf model (user-id embeddings) was kept when tonight's histories had new users:
    it has no embedding row for them, so scoring gave every one of them the same
    untrained row and the same top 100 (seen on ml-latest-small, 20 new users)."""
    from recsys.nightly import train_skip

    root = str(tmp_path / "art")
    _run(root, "preprocess", "p1", [1, 2, 3], table="movies", users=[5, 6, 7])
    run_dir = _model(root, [1, 2, 3], trained_on="p1", users=[5, 6, 7])
    _set_times(run_dir, started_h_ago=2)
    assert train_skip(root, 24)[0].startswith("latest model is 2.0 h old")
    # tonight: the same users, one fewer (nothing to retrain for)
    _run(root, "preprocess", "p2", [1, 2, 3], table="movies", users=[5, 7])
    assert train_skip(root, 24)[0].startswith("latest model is 2.0 h old")
    _run(root, "preprocess", "p3", [1, 2, 3], table="movies", users=[5, 6, 7, 8, 9])
    why = ("tonight's histories have 2 users the latest model (mf: one embedding per user "
           "id) has no embedding for (8, 9): the model is retrained")
    assert train_skip(root, 24) == ("", why)
    # not a choice, as the catalog is: scoring refuses such a model
    assert train_skip(root, 24, retrain_on_catalog_change=False) == ("", why)
    # a history model embeds anyone from their history
    _model(root, [1, 2, 3], trained_on="p1", run_id="t2")
    _set_times(os.path.join(root, "train", "t2"), started_h_ago=1)
    assert train_skip(root, 24)[0].startswith("latest model is 1.0 h old")


def _small_release(directory: Path, users: int) -> Path:
    """A release of 40 movies and ``users`` users (user u rated 12 of them)."""
    movies = ["movieId,title,genres"] + [f"{m},Movie {m} ({1980 + m}),Drama|Comedy"
                                        for m in range(1, 41)]
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"{u},{(u * 7 + k * 3) % 40 + 1},{(u + k) % 9 / 2 + 1},{900_000_000 + u * 100 + k}"
        for u in range(1, users + 1) for k in range(12)]
    directory.mkdir(parents=True)
    (directory / "movies.csv").write_text("\n".join(movies) + "\n")
    (directory / "ratings.csv").write_text("\n".join(ratings) + "\n")
    return directory


def test_an_unchanged_release_is_not_preprocessed_again_when_so_configured(tmp_path):
    """ml-25m does not change: with nightly.skip_unchanged_release each night read it
    again (about 100 s at that scale) into a new preprocess run (222 MB). The skip needs
    the same files by size and MD5 and the same [data], [split] and [preprocess]."""
    from recsys.config import load_config
    from recsys.nightly import preprocess_skip

    skip = ("--set", "nightly.skip_unchanged_release=true", *LATER)
    release = _small_release(tmp_path / "release", 60)
    first = subprocess.run(args(tmp_path, "2026-11-20", *skip, source=release), env=env(),
                           capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-4000:]
    prep = {st["name"]: st for st in summary(tmp_path)["stages"]}["preprocess"]
    assert prep["status"] == "ok"

    second = subprocess.run(args(tmp_path, "2026-11-21", *skip, source=release), env=env(),
                            capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-4000:]
    stages = {st["name"]: st for st in summary(tmp_path)["stages"]}
    assert (stages["preprocess"]["status"], stages["preprocess"]["run_id"]) == (
        "skipped", prep["run_id"])
    assert f"is the one preprocess run {prep['run_id']} read" in stages["preprocess"]["reason"]
    assert stages["score"]["status"] == "ok"
    assert pq.read_table(night(tmp_path, "2026-11-21")).num_rows == 60

    # the release grows by a user overnight: read again
    (release / "ratings.csv").write_text((release / "ratings.csv").read_text()
                                         + "61,1,4.0,900010000\n")
    third = subprocess.run(args(tmp_path, "2026-11-22", *skip, source=release), env=env(),
                           capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert third.returncode == 0, third.stdout[-4000:]
    stages = {st["name"]: st for st in summary(tmp_path)["stages"]}
    assert stages["preprocess"]["status"] == "ok" and stages["preprocess"]["run_id"] != prep[
        "run_id"]
    assert pq.read_table(night(tmp_path, "2026-11-22")).num_rows == 61

    root = io.normalize_uri(tmp_path / "artifacts")
    same = load_config(REPO / "conf" / "default.toml", [f"data.input={release}"])
    assert preprocess_skip(root, same)  # as the next night would find it
    other = load_config(REPO / "conf" / "default.toml",
                        [f"data.input={release}", "data.max_reject_fraction=0.01"])
    assert preprocess_skip(root, other) == ""  # a setting of [data] changed
    from recsys import artifacts

    latest = artifacts.resolve(root, "preprocess")
    manifest = artifacts.read_manifest(latest)
    manifest["counts"]["rows_by_reason"]["ratings"]["timestamp_out_of_range"] = 1
    io.write_text(io.join(latest, artifacts.MANIFEST), json.dumps(manifest))
    assert preprocess_skip(root, same) == ""  # a rating from the future may be valid now


def test_the_summary_names_the_nights_score_keep_nights_removed_and_those_it_could_not():
    from recsys.nightly import NightlyResult, StageResult, format_summary

    def said(expired: dict) -> list[str]:
        score = StageResult("score", "ok", 13.4, run_id="r1", details={
            "counts": {"users": 610, "top_n": 100}, "table_root": "file:///t",
            "tables": {"recommendations": {"name": "default.movielens_recommendations"}},
            "expired": expired})
        text = format_summary(NightlyResult("n1", "2026-11-24", 0, "/l/n1.log", [score]))
        return [line.strip() for line in text.splitlines() if "keep_nights" in line]

    assert said({"keep_nights": 2, "nights": ["2026-11-20", "2026-11-21"], "failed": []}) == [
        "score.keep_nights = 2: removed 2026-11-20, 2026-11-21"]
    assert said({"keep_nights": 2, "nights": [], "failed": [
        "default.t run_date=2026-11-10: dropped from the catalog, but its files stay at "
        "file:///t/run_date=2026-11-10 (Permission denied)"]}) == [
        "score.keep_nights = 2: removed no night; NOT removed: default.t run_date=2026-11-10: "
        "dropped from the catalog, but its files stay at file:///t/run_date=2026-11-10 "
        "(Permission denied)"]
    assert said({"keep_nights": 2, "nights": [], "failed": []}) == []  # nothing to say
    assert said(None) == []  # 0: the key is not set
