"""The thin jobs, run as cron and users run them: real spark-submit, real exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recsys import artifacts, io
from tests.conftest import MOVIES_CSV, ratings_csv, write_release, zone_on_another_day

REPO = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")


@pytest.mark.parametrize("launcher", ["spark-submit", "python", "spark-submit, own log4j2"])
def test_spark_submit_preprocess(tmp_path, job_env, launcher):
    """Either way the job runs with the project's logging for Spark, though neither
    command names it (the Makefile and the nightly do): Spark's own default printed a
    warning of "serious performance degradation" for each vocabulary's global window.
    A logging configuration of the user's stands as it is."""
    src = write_release(tmp_path / "rel", {
        "ratings.csv": ratings_csv("1,1,4.0,10", "1,2,3.0,11", "2,3,5.0,12"),
        "movies.csv": MOVIES_CSV,
    })
    root = tmp_path / "art"
    own = tmp_path / "own-log4j2.properties"
    own.write_text("rootLogger.level = warn\nrootLogger.appenderRef.stdout.ref = console\n"
                   "appender.console.type = Console\nappender.console.name = console\n"
                   "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = "
                   "PatternLayout\nappender.console.layout.pattern = OWN %p %c{1}: %m%n\n")
    start = {"spark-submit": [SPARK_SUBMIT, "--master", "local[2]", "--driver-memory", "1g"],
             "python": [sys.executable],
             "spark-submit, own log4j2": [SPARK_SUBMIT, "--master", "local[2]",
                                          "--driver-java-options",
                                          f"-Dlog4j2.configurationFile={own}"]}[launcher]
    proc = subprocess.run(
        [*start, str(REPO / "jobs/preprocess.py"), "--input", str(src), "--artifact-root",
         str(root), "--set", "preprocess.history_files=1"],
        capture_output=True, text=True, timeout=300, env=job_env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if launcher.endswith("own log4j2"):
        assert "OWN WARN WindowExec: No Partition Defined" in proc.stderr, proc.stderr[-3000:]
    else:
        assert "WindowExec" not in proc.stderr, proc.stderr[-3000:]
    assert "preprocess: 2 users, 3 ratings, 4 movies" in proc.stdout
    run_dir = artifacts.resolve(io.normalize_uri(root), "preprocess")
    manifest = artifacts.read_manifest(run_dir)
    assert manifest["config"]["preprocess"]["history_files"] == 1
    assert manifest["config"]["artifact_root"] == str(root)


def test_bad_input_exits_3_with_a_clear_message(tmp_path, job_env):
    src = write_release(tmp_path / "rel", {
        "ratings.csv": ratings_csv("1,1,4.0,10", header="user,movie,rating,ts"),
        "movies.csv": MOVIES_CSV,
    })
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/preprocess.py"), "--input", str(src),
         "--artifact-root", str(tmp_path / "art")],
        capture_output=True, text=True, timeout=300, env=job_env,
    )
    assert proc.returncode == 3
    assert "preprocess: input data error: ratings.csv: wrong header 'user,movie,rating,ts'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("job, bad, message", [
    ("preprocess", ["--set", "data.nope=1"], "unknown configuration key 'data.nope'"),
    ("train", ["--set", "train.epochs=0"], "train.epochs must be >= 1, got 0"),
    ("evaluate", ["--set", "evaluate.als_ranks=[]"], "evaluate.als_ranks must be a non-empty list"),
    ("nightly", ["--set", "model.kind=mf"],
     "train.objective = 'held_out_set' needs model.kind = 'history'"),
    # not a failed evaluate stage every night, after publishing
    ("nightly", ["--set", "model.kind=mf", "--set", "train.objective=next_item"],
     "nightly.evaluate = true cannot evaluate a model.kind = 'mf' model: the evaluation "
     "embeds its held-out users from their histories, which only a 'history' model can do; "
     "set nightly.evaluate = false"),
    ("nightly", ["--run-date", "2026-13-45"], "--run-date must be a date written YYYY-MM-DD"),
    ("score_all_users", ["--run-date", "2026-12-3"], "--run-date must be a date written YYYY-MM-DD"),
    ("train", ["--run-id", "../elsewhere"], "--run-id must be a plain name"),
    ("build_index", ["--run-id", "LATEST"], "--run-id must be a plain name"),
    ("nightly", ["--set", "nightly.spark_submit=/nonexistent/spark-submit"],
     "spark-submit not found or not executable: /nonexistent/spark-submit "
     "(nightly.spark_submit)"),
    ("nightly", ["--set", "nightly.spark_submit_args=--conf 'a=b"],
     "nightly.spark_submit_args is not a valid command line (No closing quotation)"),
    ("nightly", ["--set", "nightly.spark_submit_args=--master"],
     "nightly.spark_submit_args ends with --master and no master after it"),
])
def test_bad_config_exits_2_before_reading_anything(tmp_path, job_env, job, bad, message):
    """A bad value stops the job up front, with one line naming the key, not a traceback
    from Keras an epoch in (or, for the nightly, from a stage after others have run: a
    malformed run date used to fail only when the score stage registered the night)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / f"jobs/{job}.py"), "--conf-file",
         str(REPO / "conf/default.toml"), "--artifact-root", str(tmp_path / "art"),
         "--set", f"nightly.log_dir={tmp_path / 'logs'}", *bad],
        capture_output=True, text=True, timeout=120, env=job_env, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{job}: configuration error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "art").exists() and not (tmp_path / "logs").exists()


def test_the_nightly_names_its_night_in_score_run_date_timezone(tmp_path, job_env):
    """Without --run-date a night is the date it starts on in score.run_date_timezone;
    the night's preprocess fails at once here (no input), and its summary says the date."""
    zone, utc = zone_on_another_day()
    before = artifacts.run_date(timezone=zone)
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/nightly.py"), "--conf-file",
         str(REPO / "conf/default.toml"), "--artifact-root", str(tmp_path / "art"),
         "--input", str(tmp_path / "no-release"), "--set", f"nightly.log_dir={tmp_path}",
         "--set", f"score.run_date_timezone={zone}"],
        capture_output=True, text=True, timeout=300, env=job_env, cwd=tmp_path)
    assert proc.returncode == 11, proc.stdout[-2000:] + proc.stderr[-2000:]
    [summary] = (tmp_path / "art" / "nightly").glob("*/summary.json")
    night = json.loads(summary.read_text())["run_date"]
    assert night not in utc
    assert night in {before, artifacts.run_date(timezone=zone)}


def test_preprocess_run_from_elsewhere_says_where_the_embedded_corpus_is_before_spark(
        tmp_path, job_env):
    """data.input's default is relative: from another directory it is not found. The job
    says where it looked and where the project's copy is, before a JVM is started."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/preprocess.py"), "--conf-file",
         str(REPO / "conf/default.toml"), "--artifact-root", str(tmp_path / "art")],
        capture_output=True, text=True, timeout=120, env=job_env, cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "preprocess: input data error: input not found: data/ml-latest-small (give a "
        f"MovieLens release directory or its .zip); a relative path is read from the current "
        f"directory, {tmp_path}; the project's copy is {REPO / 'data/ml-latest-small'}")
    assert "log4j" not in proc.stdout + proc.stderr  # Spark never started
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("job, missing", [
    ("train", "preprocess"), ("build_index", "train"), ("score_all_users", "train"),
    ("evaluate", "train"),
])
def test_a_root_without_the_runs_a_stage_reads_is_said_before_spark_and_left_alone(
        tmp_path, job_env, job, missing):
    """Run from the wrong directory (cron starts in $HOME), the relative default root has
    no runs: every stage says so with exit 4 before a JVM starts, and creates no
    artifact root there (scoring used to start Spark, then record a failed run in a new
    ./artifacts; the evaluation started Spark first)."""
    proc = subprocess.run([sys.executable, str(REPO / f"jobs/{job}.py")],
                          capture_output=True, text=True, timeout=120, env=job_env,
                          cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{job}: artifact error: no completed '{missing}' run under "
        f"{io.normalize_uri(str(tmp_path / 'artifacts'))}: run the {missing} job first")
    assert "log4j" not in proc.stdout + proc.stderr  # Spark never started
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_stops_a_job_cleanly_its_temporary_files_gone_and_its_run_failed(
        small_run, tmp_path, job_env):
    """What cron, systemd and the nightly send to stop a job. Python's default ends the
    process on the spot: train left its staging directory and TensorFlow's generated code
    in the temporary directory, and no failed run."""
    config, _ = small_run
    root = tmp_path / "art"
    shutil.copytree(Path(io.local_path(config.artifact_root)) / "preprocess", root / "preprocess")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "jobs/train.py"), "--conf-file", str(REPO / "conf/default.toml"),
         "--artifact-root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**job_env, "TMPDIR": str(tmp)}, cwd=tmp_path)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "epoch 1: validation" in line:
            break
    assert proc.poll() is None, "".join(seen)[-3000:]
    assert any(p.name.startswith("recsys-train-") for p in tmp.iterdir())
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, rest[-3000:]
    assert rest.strip().splitlines()[-1] == "train: terminated (SIGTERM)"
    assert "Traceback" not in rest
    assert sorted(tmp.iterdir()) == []
    (run,) = [p for p in (root / "train").iterdir() if p.is_dir()]
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


def test_a_driver_jvm_that_cannot_start_exits_6_with_what_to_check(tmp_path, job_env):
    """Not Py4J's "Java gateway process exited" traceback: the JVM's own reason, then one
    line naming the settings to check."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/preprocess.py"), "--artifact-root", str(tmp_path / "art"),
         "--input", str(REPO / "data/ml-latest-small"), "--set", "spark.driver_memory=100000t"],
        capture_output=True, text=True, timeout=120, env=job_env, cwd=tmp_path,
    )
    assert proc.returncode == 6, proc.stderr[-2000:]
    assert "Could not reserve enough space" in proc.stdout + proc.stderr  # the JVM's own
    assert ("preprocess: Spark did not start: the Spark driver JVM exited before the session "
            "started") in proc.stderr
    assert "spark.driver_memory ('100000t')" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "art").exists()


def test_a_spark_home_without_spark_is_said_before_a_jvm_by_a_job_and_the_nightly(tmp_path,
                                                                                  job_env):
    """A machine's SPARK_HOME for a Spark that is not there: the job used to end in
    pyspark's FileNotFoundError traceback (exit 1), the nightly in a shell error of its
    first stage (exit 11)."""
    env = {**job_env, "SPARK_HOME": str(tmp_path / "spark")}
    common = ["--conf-file", str(REPO / "conf/default.toml"), "--artifact-root",
              str(tmp_path / "art"), "--input", str(REPO / "data/ml-latest-small")]
    job = subprocess.run([sys.executable, str(REPO / "jobs/preprocess.py"), *common],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert job.returncode == 6, job.stderr[-2000:]
    assert job.stderr.strip().splitlines()[-1].startswith(
        f"preprocess: Spark did not start: SPARK_HOME={tmp_path / 'spark'} has no "
        "bin/spark-submit: unset SPARK_HOME to use the Spark of this environment's pyspark")
    assert "Traceback" not in job.stderr and "log4j" not in job.stdout + job.stderr
    night = subprocess.run([sys.executable, str(REPO / "jobs/nightly.py"), *common, "--set",
                            f"nightly.log_dir={tmp_path / 'logs'}"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert night.returncode == 2, night.stdout[-2000:] + night.stderr[-2000:]
    assert night.stderr.strip().splitlines()[-1].startswith(
        "nightly: configuration error: this environment's spark-submit would start another "
        f"Spark: SPARK_HOME={tmp_path / 'spark'} has no bin/spark-submit")
    assert "started" not in night.stdout


@pytest.mark.parametrize("job, where, code, message", [
    ("preprocess", ["--input", "http://example.invalid/ml-25m.zip"], 3,
     "preprocess: input data error: input http://example.invalid/ml-25m.zip: cannot open a "
     "filesystem for http://example.invalid/ml-25m.zip: Unrecognized filesystem type"),
    ("train", ["--artifact-root", "gopher://example.invalid/art"], 4,
     "train: artifact storage error: cannot open a filesystem for gopher://example.invalid/art"),
    # the nightly says it before its first stage (it used to fail that stage: exit 11)
    ("nightly", ["--artifact-root", "gopher://example.invalid/art"], 4,
     "nightly: artifact storage error: cannot open a filesystem for gopher://example.invalid/art"),
])
def test_a_uri_no_filesystem_serves_is_said_with_its_exit_code(tmp_path, job_env, job, where,
                                                                 code, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / f"jobs/{job}.py"), "--conf-file",
         str(REPO / "conf/default.toml"), "--artifact-root", str(tmp_path / "art"), *where],
        capture_output=True, text=True, timeout=300, env=job_env, cwd=tmp_path,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if job == "preprocess":
        assert "download it first (e.g. jobs/download_movielens.py)" in proc.stderr
    if job == "nightly":
        assert "started" not in proc.stdout and list(tmp_path.iterdir()) == []
