"""A full disk (or an exhausted quota) under the artifacts: each job says so in one line
with exit 4 and the place, records its run as failed and removes what it had written,
which would otherwise hold the space the next run needs. The errors are the kernel's own
(a real tmpfs that fills up, /dev/full), met through Python, pyarrow, Spark and the JVM.
The score job's case is in tests/scoring/test_score_job.py."""

from __future__ import annotations

import errno
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from recsys import artifacts, io
from recsys.config import Config
from tests.conftest import REPO, SMALL
from tests.filesystems import run_on_small_fs

DEV_FULL = "/dev/full"  # every write to it fails with ENOSPC


def enospc() -> OSError:
    try:
        with open(DEV_FULL, "wb", buffering=0) as fh:
            fh.write(b"x")
    except OSError as exc:
        return exc
    raise AssertionError(f"a write to {DEV_FULL} succeeded")


def test_a_full_disk_is_told_from_pythons_pyarrows_and_the_jvms_errors():
    full = enospc()
    assert full.errno == errno.ENOSPC
    assert io.storage_full(full) == "no space left on device"
    assert io.storage_full(full, writing="under /x") == "no space left on device writing under /x"
    assert io.storage_full(full, places="under /r and in /t") == \
        "no space left on device (the job writes under /r and in /t)"
    try:  # raised while handling it: still the cause
        try:
            raise full
        except OSError:
            raise RuntimeError("cleanup failed too")
    except RuntimeError as outer:
        assert io.storage_full(outer) == "no space left on device"
    try:  # one that says it itself, raised "from None" on purpose, stands as it is
        try:
            raise full
        except OSError:
            raise ValueError("cannot write x to the temporary directory: free space") from None
    except ValueError as own:
        assert io.storage_full(own) is None
    from recsys.data.errors import InputFileError  # the project's own errors say it themselves
    assert io.storage_full(InputFileError("cannot write x (No space left on device)")) is None
    spark = RuntimeError(
        "An error occurred while calling o1189.parquet.\n: org.apache.spark.SparkException: "
        "[TASK_WRITE_FAILED] Task failed while writing rows to file:/data/art/preprocess/r1/"
        "histories. SQLSTATE: 58030\nCaused by: java.io.IOException: No space left on device")
    assert io.storage_full(spark, writing="elsewhere") == \
        "no space left on device writing file:/data/art/preprocess/r1/histories"
    hdfs = RuntimeError("org.apache.hadoop.hdfs.protocol.DSQuotaExceededException: The "
                        "DiskSpace quota of /user/recs is exceeded")
    assert io.storage_full(hdfs) == "DSQuotaExceededException"
    assert io.storage_full(OSError(errno.EDQUOT, "x", "/q/f")) == \
        "disk quota exceeded writing /q/f"
    assert io.storage_full(OSError(errno.EACCES, "Permission denied")) is None
    assert io.storage_full(ValueError("no space in this title")) is None
    said = io.StorageFullError("no space left on device writing the tables under /t")
    assert io.storage_full(said, writing="ignored") == str(said)


def test_a_failed_run_on_a_full_disk_keeps_only_its_manifest_and_says_where(tmp_path):
    root = str(tmp_path / "artifacts")
    run_dir = artifacts.stage_dir(root, "train", "r1")
    io.write_text(io.join(run_dir, "user_tower.npz"), "x" * 10_000)
    io.write_text(io.join(run_dir, "vocab", "movies.txt"), "1\n2\n")
    manifest = artifacts.Manifest("train", "r1", Config())
    with pytest.raises(io.StorageFullError) as raised:
        with artifacts.failure_recorded(run_dir, manifest):
            raise enospc()
    assert str(raised.value) == f"no space left on device (the job writes under {run_dir})"
    assert isinstance(raised.value.__cause__, OSError)
    assert io.list_dir(run_dir) == [artifacts.MANIFEST]
    written = json.loads(io.read_text(io.join(run_dir, artifacts.MANIFEST)))
    assert written["status"] == "failed"
    assert written["error"] == f"StorageFullError: {raised.value}"
    # any other failure keeps what the run wrote, to be read
    other = artifacts.stage_dir(root, "train", "r2")
    io.write_text(io.join(other, "user_tower.npz"), "x")
    with pytest.raises(ValueError):
        with artifacts.failure_recorded(other, artifacts.Manifest("train", "r2", Config())):
            raise ValueError("bad")
    assert io.list_dir(other) == [artifacts.MANIFEST, "user_tower.npz"]


def test_a_write_that_fills_the_disk_leaves_no_half_written_file(tmp_path):
    code = ("import sys; from recsys import io\n"
            "try:\n    io.write_text(sys.argv[1], 'x' * 400_000)\n"
            "except OSError as exc:\n    print(type(exc).__name__, exc)\n")
    target = tmp_path / "fs" / "manifest.json"
    done = run_on_small_fs([sys.executable, "-c", code, str(target)],
                           tmp_path / "fs", "100k", prepare="echo kept > other.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"StorageFullError no space left on device writing {target}\n"
    assert done.left == {str(tmp_path / "fs" / "other.txt"): 5}  # no manifest.json.tmp-*


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def preprocess_on_small_fs(fs: Path, size: str, root: Path, env: dict[str, str], *sets: str):
    return run_on_small_fs(
        [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--input", str(SMALL),
         "--artifact-root", str(root), *[a for s in sets for a in ("--set", s)]],
        fs, size, env=env)


def test_preprocess_on_a_full_disk_exits_4_naming_the_place(tmp_path, job_env):
    fs = tmp_path / "fs"
    done = preprocess_on_small_fs(fs, "800k", fs / "art", job_env, "spark.driver_memory=2g")
    assert done.returncode == 4, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith(f"preprocess: artifact storage error: no space left on device "
                           f"writing file:{fs}/art/preprocess/"), line
    assert "histories: free space there" in line
    # the failed run keeps its manifest, which says why; what it wrote is gone
    assert [Path(p).name for p in done.left] == ["manifest.json"], done.left


#: One epoch of the code's default model: on ml-latest-small far below most-popular, which
#: train.min_recall_vs_popular would refuse before the write these tests are about.
ONE_EPOCH = ("--set", "train.epochs=1", "--set", "train.min_recall_vs_popular=0")


def test_train_on_a_full_disk_exits_4_and_the_partial_model_is_removed(small_run, tmp_path,
                                                                      job_env):
    _, pre = small_run
    fs = tmp_path / "fs"
    source = io.local_path(pre.run_dir)
    run = Path(source).name
    prepare = (f"mkdir -p art/preprocess && cp -r '{source}' art/preprocess/ && "
               f"echo {run} > art/preprocess/LATEST")
    done = run_on_small_fs(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--artifact-root", str(fs / "art"),
         "--preprocess-run", run, *ONE_EPOCH],
        fs, "4m", prepare=prepare, env=job_env)
    assert done.returncode == 4, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith("train: artifact storage error: no space left on device writing "
                           f"file://{fs}/art/train/"), line
    assert "Traceback" not in done.stderr
    trained = [p for p in done.left if "/art/train/" in p]
    assert [Path(p).name for p in trained] == ["manifest.json"], trained


def test_a_full_temporary_directory_is_named_as_such_not_the_run(small_run, tmp_path, job_env):
    """The model is written to the job's temporary directory first: a full TMPDIR is said
    as that, not as the artifact root, which has room."""
    _, pre = small_run
    root = tmp_path / "art"
    source = Path(io.local_path(pre.run_dir))
    shutil.copytree(source, root / "preprocess" / source.name)
    (root / "preprocess" / "LATEST").write_text(source.name + "\n")
    tmp = tmp_path / "tmp"
    done = run_on_small_fs(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--artifact-root", str(root),
         *ONE_EPOCH],
        tmp, "2m", env={**job_env, "TMPDIR": str(tmp)})
    assert done.returncode == 4, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith(f"train: artifact storage error: no space left on device writing "
                           f"{tmp}/recsys-train-"), line
    assert ", the job's temporary directory (TMPDIR): free space there" in line
    assert done.left == {}  # the job's temporary directory is removed all the same
    failed = next((root / "train").iterdir())
    assert json.loads((failed / "manifest.json").read_text())["status"] == "failed"
    assert sorted(p.name for p in failed.iterdir()) == ["manifest.json"]


def test_a_full_temporary_directory_under_a_zip_release_keeps_the_extractions_own_message(
        tmp_path, job_env):
    """The zip extraction says a full TMPDIR itself (exit 3, where, what to do); the
    full-disk handling must not replace that with the run's directory."""
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(SMALL.iterdir()):
            zf.write(path, f"ml-latest-small/{path.name}")
    tmp = tmp_path / "tmp"
    done = run_on_small_fs(
        [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--input", str(archive),
         "--artifact-root", str(tmp_path / "art")],
        tmp, "1m", env={**job_env, "TMPDIR": str(tmp)})
    assert done.returncode == 3, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith(f"preprocess: input data error: file://{archive}: cannot write "
                           "ml-latest-small/"), line
    assert f"to the temporary directory {tmp}/" in line
    assert "(No space left on device); free space there (or point TMPDIR elsewhere)" in line
    assert done.left == {}


def test_a_full_spark_scratch_is_named_as_such_not_the_run(tmp_path, job_env):
    """Spark's shuffle and spill files fill their disk (spark.scratch_dir): the message
    used to send the user to the run's directory, which had room."""
    scratch = tmp_path / "scratch"
    done = preprocess_on_small_fs(scratch, "1m", tmp_path / "art", job_env,
                                  f"spark.scratch_dir={scratch}")
    assert done.returncode == 4, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith(f"preprocess: artifact storage error: no space left on device "
                           f"writing Spark's scratch directory {scratch}/"), line
    assert "(shuffle and spill files; spark.scratch_dir for local masters" in line
    assert done.left == {}  # the job's scratch is removed all the same
    assert not (tmp_path / "art").exists()  # it failed before its run wrote anything


def test_spark_scratch_is_told_from_the_jvms_stack():
    shuffle = RuntimeError(
        "An error occurred while calling o120.parquet.\n: org.apache.spark.SparkException: "
        "Job aborted due to stage failure: … java.io.IOException: No space left on device\n"
        "\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)\n"
        "\tat org.apache.spark.storage.DiskBlockObjectWriter.commitAndGet(…)\n")
    assert io.storage_full(shuffle, writing="elsewhere", spark_scratch="/s/1") == (
        "no space left on device writing Spark's scratch directory /s/1 (shuffle and spill "
        "files; spark.scratch_dir for local masters, else spark.local.dir or "
        "SPARK_LOCAL_DIRS)")
    output = RuntimeError(  # the output's own path wins: Spark names it
        "[TASK_WRITE_FAILED] Task failed while writing rows to file:/a/b. \nCaused by: "
        "java.io.IOException: No space left on device\n\tat org.apache.spark.shuffle.x")
    assert io.storage_full(output, spark_scratch="/s/1") == \
        "no space left on device writing file:/a/b"
