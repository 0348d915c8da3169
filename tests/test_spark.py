"""build_session with the persistent Hive catalog: what a job leaves on the driver's disk."""

from __future__ import annotations

import subprocess
import sys

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
