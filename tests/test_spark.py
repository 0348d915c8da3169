"""build_session: what a job leaves on the driver's disk (the Hive catalog's files, Spark's
scratch), and who holds the embedded metastore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SESSION = """
import sys
from recsys.config import SparkConfig
from recsys.spark import build_session
spark = build_session("hive-resources", SparkConfig(metastore_dir=sys.argv[1]))
spark.sql("CREATE TABLE IF NOT EXISTS t (x INT) USING parquet")
spark.sql("INSERT INTO t VALUES (1), (2)")
print("ROWS", spark.table("t").count())
spark.stop()
"""


def test_a_hive_session_leaves_nothing_in_the_temp_or_working_directory(tmp_path, job_env):
    """Hive's session state makes ``<java.io.tmpdir>/<uuid>_resources`` unless told
    where, and Spark never closes that session: every job used to leave one behind.
    Derby, which boots with the embedded metastore, writes derby.log into the working
    directory unless told where."""
    java_tmp, meta = tmp_path / "java-tmp", tmp_path / "metastore"
    java_tmp.mkdir()
    env = {**job_env, "JAVA_TOOL_OPTIONS": f"-Djava.io.tmpdir={java_tmp}"}
    for _ in range(2):  # a second job reuses the same directory
        out = subprocess.run([sys.executable, "-c", SESSION, str(meta)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "ROWS" in out.stdout, out.stderr[-3000:]
    assert [p.name for p in java_tmp.iterdir() if p.name.endswith("_resources")] == []
    assert (meta / "hive-resources").is_dir()
    # Derby's log goes beside the metastore, not into the job's working directory
    assert not (tmp_path / "derby.log").exists() and (meta / "derby.log").is_file()
    assert "ROWS 4" in out.stdout  # the catalog itself still persists between jobs


LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as Derby's FileChannel.tryLock does
print("LOCKED", flush=True)
sys.stdin.read()
"""


def test_the_process_holding_a_derby_database_is_found_without_locking_it(tmp_path):
    from recsys.spark import derby_holder, describe_process

    db = tmp_path / "metastore_db"
    assert derby_holder(str(db)) is None  # no database yet
    db.mkdir()
    (db / "dbex.lck").write_bytes(b"\x00" * 4)
    assert derby_holder(str(db)) is None  # a database nobody has booted
    holder = subprocess.Popen([sys.executable, "-c", LOCK, str(db / "dbex.lck")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        assert derby_holder(str(db)) == holder.pid
        assert derby_holder(str(tmp_path)) is None  # another directory is not held
        said = describe_process(holder.pid)
        assert said.startswith(f"process {holder.pid} (") and "-c" in said
    finally:
        holder.communicate(input="", timeout=30)
    assert derby_holder(str(db)) is None


FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a nightly and the stages it starts
print("LOCKED", flush=True)
sys.stdin.read()
"""

SHUFFLE = """
import sys, time
from recsys.config import SparkConfig
from recsys.spark import build_session
spark = build_session("scratch", SparkConfig(scratch_dir=sys.argv[1], hive_catalog=False))
print("TMPDIR", spark.sparkContext._jvm.java.lang.System.getProperty("java.io.tmpdir"))
n = spark.range(100000).selectExpr("id % 97 AS k").groupBy("k").count().count()
print("SHUFFLED", n, flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
spark.stop()
"""


def test_a_killed_jobs_spark_scratch_is_removed_by_the_next_job_and_no_one_elses(
        tmp_path, job_env):
    """Spark deletes its shuffle files (and the JVM its temporary files) when its JVM
    exits, not when it is killed: each driver gets its own directory under
    spark.scratch_dir, and the next job removes those whose owner is gone."""
    root = tmp_path / "scratch"
    killed = subprocess.Popen([sys.executable, "-c", SHUFFLE, str(root), "hang"], env=job_env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    try:
        assert killed.stdout is not None and killed.stdout.readline().startswith("TMPDIR")
        assert killed.stdout.readline().startswith("SHUFFLED 97")
        shuffle = list(root.glob(f"{killed.pid}-*/blockmgr-*/*/shuffle_*"))
        assert shuffle, list(root.rglob("*"))  # the job's shuffle files are in its directory
        # and so is the JVM's temporary directory: the native library it unpacked for the
        # shuffle's compression, Spark's own spark-* directory
        own = shuffle[0].parent.parent.parent
        assert list(own.glob("liblz4-java-*.so")) and list(own.glob("spark-*")), \
            sorted(p.name for p in own.iterdir())
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # driver and JVM, as the OOM killer might
        killed.wait(timeout=60)
    left = shuffle[0].parent.parent.parent
    assert left.is_dir()  # what Spark itself never cleans up
    # not swept: a directory whose owner lives, one whose lock an orphan still holds (a
    # nightly's stage outliving its nightly), one not named as ours
    alive = root / f"{os.getpid()}-abcdefgh"
    orphaned = root / f"{killed.pid}-ijklmnop"  # its owner is gone, as above
    foreign = root / "notes"
    for d in (alive, orphaned, foreign):
        d.mkdir()
    (orphaned / ".owner").touch()
    holder = subprocess.Popen([sys.executable, "-c", FLOCK, str(orphaned / ".owner")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        out = subprocess.run([sys.executable, "-c", SHUFFLE, str(root), "stop"], env=job_env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "SHUFFLED 97" in out.stdout, out.stderr[-3000:]
    finally:
        holder.communicate(input="", timeout=30)
    assert not left.exists()
    assert alive.is_dir() and orphaned.is_dir() and foreign.is_dir()
    # the job that ended normally removed its own directory as it exited
    assert sorted(root.iterdir()) == sorted([alive, orphaned, foreign])


def test_a_scratch_dir_that_cannot_be_made_is_a_configuration_error(tmp_path):
    from recsys.config import ConfigError, SparkConfig
    from recsys.spark import ScratchDir

    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"spark.scratch_dir: cannot make a directory under "
                                          r".*a-file/x \(Not a directory\)"):
        ScratchDir(SparkConfig(scratch_dir=str(tmp_path / "a-file" / "x")))
    with pytest.raises(ConfigError, match=r"spark.scratch_dir: .*a,b has a comma, and Spark "
                                          r"reads its local directories as a comma-separated"):
        ScratchDir(SparkConfig(scratch_dir=str(tmp_path / "a,b")))
    assert not (tmp_path / "a,b").exists()
    made = ScratchDir(SparkConfig(scratch_dir=str(tmp_path / "ok")))
    assert Path(made.path).parent == tmp_path / "ok" and (Path(made.path) / ".owner").is_file()
    made.remove()
    assert not (tmp_path / "ok").exists()  # nothing else was there: the root goes too


def test_the_sessions_scratch_directory_is_its_own_not_its_childrens(spark):
    """The JVM that Python starts is told its directory through its environment; the
    processes the driver starts later (jobs, tests) must make their own, not share it."""
    from recsys.config import SparkConfig
    from recsys.spark import scratch_root

    jvm_dirs = spark.sparkContext._jvm.java.lang.System.getenv("SPARK_LOCAL_DIRS")
    assert jvm_dirs is not None
    scratch = Path(jvm_dirs)
    assert scratch.parent == Path(scratch_root(SparkConfig()))
    assert scratch.name.startswith(f"{os.getpid()}-") and (scratch / ".owner").is_file()
    assert any(scratch.glob("blockmgr-*"))
    assert "SPARK_LOCAL_DIRS" not in os.environ
    system = spark.sparkContext._jvm.java.lang.System
    assert system.getProperty("java.io.tmpdir") == str(scratch)
    assert "java.io.tmpdir" not in os.environ.get("SPARK_SUBMIT_OPTS", "")


def test_the_jvm_temporary_directory_goes_to_the_scratch_unless_the_user_chose_one():
    from recsys.spark import java_tmpdir_set, scratch_env

    assert scratch_env("/s", {}) == {"SPARK_LOCAL_DIRS": "/s",
                                     "SPARK_SUBMIT_OPTS": "-Djava.io.tmpdir=/s"}
    # the user's own spark-submit options are kept, ours added after them
    assert scratch_env("/s", {"SPARK_SUBMIT_OPTS": "-Dx=1"})["SPARK_SUBMIT_OPTS"] == \
        "-Dx=1 -Djava.io.tmpdir=/s"
    for var in ("SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS"):
        env = {var: "-Xss4m -Djava.io.tmpdir=/big"}
        assert java_tmpdir_set(env)
        assert scratch_env("/s", env) == {"SPARK_LOCAL_DIRS": "/s"}
    assert java_tmpdir_set({}, "-Djava.io.tmpdir=/big -Dy=2")
    assert not java_tmpdir_set({"JAVA_TOOL_OPTIONS": "-Xss4m"}, "-Dy=2")


def test_a_scratch_dir_with_spaces_and_quotes_reaches_the_jvm_whole(tmp_path, job_env):
    """spark-submit splits SPARK_SUBMIT_OPTS on spaces unless quoted."""
    root = tmp_path / "my dir" / 'it\'s "q"'
    out = subprocess.run([sys.executable, "-c", SHUFFLE, str(root), "stop"], env=job_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "SHUFFLED 97" in out.stdout, out.stderr[-3000:]
    tmpdir = Path(out.stdout.split("TMPDIR ", 1)[1].splitlines()[0])
    assert tmpdir.parent == root
    assert not root.exists()  # removed as the job ended


def test_a_workers_failed_import_is_told_from_the_drivers_own():
    from recsys.spark import worker_import_error

    jvm = RuntimeError(
        "An error occurred while calling o93.collectToPython.\n: org.apache.spark."
        "SparkException: Job aborted due to stage failure: … org.apache.spark.api.python."
        "PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: "
        "Traceback (most recent call last):\n  File \"…/worker.py\", line 3\n"
        "ModuleNotFoundError: No module named 'scann'\n\n\tat org.apache.spark…")
    assert worker_import_error(jvm) == "No module named 'scann'"
    try:
        try:
            raise jvm
        except RuntimeError:
            raise OSError("cleanup failed too")
    except OSError as outer:  # raised while handling it: still found
        assert worker_import_error(outer) == "No module named 'scann'"
    assert worker_import_error(ModuleNotFoundError("No module named 'scann'")) is None
    assert worker_import_error(RuntimeError("PythonException: ValueError: bad row")) is None


def test_a_spark_home_of_another_spark_is_said(tmp_path):
    import pyspark

    from recsys.spark import spark_home_problem

    ours = pyspark.__version__
    minor = ".".join(ours.split(".")[:2])
    assert spark_home_problem({}) is None
    assert spark_home_problem({"SPARK_HOME": os.path.dirname(pyspark.__file__)}) is None
    fix = (f"unset SPARK_HOME to use the Spark of this environment's pyspark ({ours}), or "
           f"point it at a Spark {ours} installation")
    assert spark_home_problem({"SPARK_HOME": str(tmp_path)}) == \
        f"SPARK_HOME={tmp_path} has no bin/spark-submit: {fix}"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "spark-submit").write_text("")
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "spark-core_2.12-3.5.1.jar").write_text("")
    assert spark_home_problem({"SPARK_HOME": str(tmp_path)}) == \
        f"SPARK_HOME={tmp_path} is Spark 3.5, this environment's pyspark {ours}: {fix}"
    (tmp_path / "jars" / "spark-core_2.12-3.5.1.jar").rename(
        tmp_path / "jars" / f"spark-core_2.13-{minor}.9.jar")  # the same minor: its own
    assert spark_home_problem({"SPARK_HOME": str(tmp_path)}) is None
