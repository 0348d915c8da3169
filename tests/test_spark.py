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
