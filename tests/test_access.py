"""A place a job cannot write, or a release it cannot read: said in one line, before the
job's work (minutes of training, hours at full scale) and before Spark starts, not as a
traceback at the end. The places are real: a read-only bind mount, and permission bits
that bind (tests/filesystems.py); the jobs are the real ones."""

from __future__ import annotations

import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from recsys import artifacts, io
from recsys.config import ConfigError
from tests.conftest import REPO, SMALL
from tests.filesystems import (REMOUNTED, run_on_small_fs, run_read_only, run_read_only_from,
                               run_unprivileged)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def refused(root: str, stage: str, why: str) -> str:
    return (f"configuration error: cannot write under {io.join(io.normalize_uri(root), stage)}"
            f" ({why}): set artifact_root (--artifact-root) to a place this job can write")


def test_the_check_leaves_the_root_as_it_found_it(tmp_path):
    """A job that stops after it (Spark cannot start, say) leaves nothing behind."""
    root = tmp_path / "art"
    artifacts.check_writable(str(root / "deeper"), "train")
    assert list(tmp_path.iterdir()) == []  # the directories it made are removed again
    (root / "train" / "r1").mkdir(parents=True)
    artifacts.check_writable(str(root), "train")
    assert [p.name for p in (root / "train").iterdir()] == ["r1"]  # its file removed


def test_a_file_in_the_way_of_the_root_is_a_configuration_error(tmp_path):
    (tmp_path / "art").write_text("not a directory")
    with pytest.raises(ConfigError) as raised:
        artifacts.check_writable(str(tmp_path / "art"), "index")
    assert str(raised.value) == refused(str(tmp_path / "art"), "index", "Not a directory")[
        len("configuration error: "):]


@pytest.mark.parametrize("job, stage", [
    ("train", "train"), ("build_index", "index"), ("evaluate", "evaluate"),
])
def test_a_stage_on_a_read_only_root_stops_before_its_work(small_trained, job_env, job, stage):
    """Training used to run to its end (40 s here, the night's longest stage at full
    scale) and then fail to copy the model, with exit 1 and pyarrow's traceback."""
    root = os.path.dirname(os.path.dirname(io.local_path(small_trained.run_dir)))
    before = sorted(os.listdir(root))
    done = run_read_only([sys.executable, str(REPO / f"jobs/{job}.py"), "--artifact-root",
                          root, "--train-run" if job != "train" else "--preprocess-run",
                          small_trained.manifest["run_id"] if job != "train"
                          else small_trained.manifest["inputs"]["preprocess_run"]],
                         Path(root), env=job_env)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-3000:]
    assert last_line(done.stderr) == f"{job}: " + refused(root, stage, "Read-only file system")
    assert "Epoch" not in said and "Traceback" not in said
    assert "log4j" not in said  # the evaluation's Spark never started
    assert sorted(os.listdir(root)) == before


def test_the_nightly_on_a_read_only_root_starts_no_stage(tmp_path, job_env):
    root = tmp_path / "art"
    root.mkdir()
    done = run_read_only([sys.executable, str(REPO / "jobs/nightly.py"), "--conf-file",
                          str(REPO / "conf/default.toml"), "--artifact-root", str(root),
                          "--set", f"nightly.log_dir={tmp_path / 'logs'}"], root, env=job_env)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert last_line(done.stderr) == "nightly: " + refused(str(root), "nightly",
                                                           "Read-only file system")
    assert "started" not in done.stdout
    assert list(root.iterdir()) == []


def preprocess(release: Path, root: Path, env: dict[str, str]):
    return run_unprivileged([sys.executable, str(REPO / "jobs/preprocess.py"), "--input",
                             str(release), "--artifact-root", str(root)], env=env)


def assert_unreadable(done, what: str) -> None:  # noqa: ANN001
    assert done.returncode == 3, done.stderr[-3000:]
    assert last_line(done.stderr) == (
        f"preprocess: input data error: cannot read {what} (Permission denied): give this "
        "job read access to the release, or a copy it can read")
    assert "log4j" not in done.stdout + done.stderr  # Spark never started


def test_preprocess_says_which_file_of_the_release_it_cannot_read(tmp_path, job_env):
    """It used to start Spark, then end with exit 1 and pyarrow's PermissionError."""
    release = tmp_path / "ml-latest-small"
    shutil.copytree(SMALL, release)
    (release / "ratings.csv").chmod(0)
    assert_unreadable(preprocess(release, tmp_path / "art", job_env),
                      f"ratings.csv in {release}")
    assert not (tmp_path / "art").exists()
    (release / "ratings.csv").chmod(0o644)
    release.chmod(0)  # the directory itself
    done = preprocess(release, tmp_path / "art", job_env)
    release.chmod(0o755)
    assert_unreadable(done, str(release))


def test_preprocess_says_it_cannot_read_the_zip(tmp_path, job_env):
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(SMALL / "ratings.csv", "ml-latest-small/ratings.csv")
    archive.chmod(0)
    assert_unreadable(preprocess(archive, tmp_path / "art", job_env), str(archive))


def test_preprocess_refuses_a_root_it_has_no_permission_to_write(tmp_path, job_env):
    root = tmp_path / "art"
    root.mkdir(mode=0o555)
    done = preprocess(SMALL, root, job_env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert last_line(done.stderr) == "preprocess: " + refused(str(root), "preprocess",
                                                              "Permission denied")
    assert "log4j" not in done.stdout + done.stderr
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("job", ["preprocess", "nightly"])
def test_a_temporary_directory_mounted_noexec_is_said_before_spark(tmp_path, job_env, job):
    """A hardened /tmp (noexec): the Spark JVM unpacks snappy and lz4 into its temporary
    directory, the job's Spark scratch under TMPDIR, and cannot load them. The job used
    to fail at its first compressed write, 19 s in, with exit 1 and an
    UnsatisfiedLinkError ("failed to map segment from shared object")."""
    tmp = tmp_path / "tmp"
    cmd = [sys.executable, str(REPO / f"jobs/{job}.py"), "--conf-file",
           str(REPO / "conf/default.toml"), "--artifact-root", str(tmp_path / "art"),
           "--input", str(SMALL), "--set", f"nightly.log_dir={tmp_path / 'logs'}"]
    done = run_on_small_fs(cmd, tmp, "64m", env={**job_env, "TMPDIR": str(tmp)}, noexec=True)
    assert done.returncode == 2, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith(
        f"{job}: configuration error: spark.scratch_dir: {tmp}/recsys-spark-"), line
    assert line.endswith(
        "is on a filesystem mounted noexec, where the Spark JVM would unpack its native "
        "libraries (snappy, lz4) and fail to load them: set spark.scratch_dir to a directory "
        "on a filesystem that allows executables (e.g. under /var/tmp), or give the JVM a "
        "-Djava.io.tmpdir of your own (SPARK_SUBMIT_OPTS or JAVA_TOOL_OPTIONS)"), line
    assert "log4j" not in done.stdout + done.stderr and "started" not in done.stdout
    assert done.left == {}
    assert not (tmp_path / "logs").exists()


MKDIRS = ("java.io.IOException: Mkdirs failed to create file:{}/preprocess/r1/movies/"
          "_temporary/0/_temporary/attempt_2026_0058_m_000000_114 (exists=false, cwd=file:/w)")
REFUSED_LINE = (": the filesystem refused this job there while it ran; make the place "
                "writable for it again (or give it another artifact root) and run it again")


def refusal_in(cmd_runner, text: str, *args) -> str:  # noqa: ANN001
    """What storage_refused makes of ``text`` (an error as the JVM gives it), in a process
    run by ``cmd_runner`` (which sees the filesystem as the job would)."""
    code = ("import sys; from recsys import io; "
            "print(io.storage_refused(RuntimeError(sys.argv[1])))")
    done = cmd_runner([sys.executable, "-c", code, text], *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_a_refusal_is_told_from_pythons_pyarrows_and_the_jvms_errors(tmp_path, job_env):
    # Python (the errno and the file), pyarrow (the errno, the file in its text), the JVM
    assert io.storage_refused(PermissionError(13, "Permission denied", "/r/a")) == \
        "permission denied at /r/a"
    arrow = OSError(30, "[Errno 30] Failed to open local file '/r/tables/_staging/t/"
                        "part-0.parquet'. Detail: [errno 30] Read-only file system")
    assert io.storage_refused(arrow) == \
        "read-only file system at /r/tables/_staging/t/part-0.parquet"
    jvm = RuntimeError("Caused by: java.io.FileNotFoundException: /r/x/y.crc (Read-only "
                       "file system)\n\tat java.base/java.io.FileOutputStream.open0")
    assert io.storage_refused(jvm) == "read-only file system at /r/x/y.crc"
    nio = RuntimeError("java.nio.file.AccessDeniedException: /r/train/x")
    assert io.storage_refused(nio) is None  # no reason given, and not a place to look at
    assert io.storage_refused(RuntimeError("java.nio.file.FileSystemException: /r/q: "
                                           "Read-only file system")) == \
        "read-only file system at /r/q"
    assert io.storage_refused(OSError(30, "x"), writing="the model") == \
        "read-only file system at the model"
    # a worker's own error, which says where, comes back as text inside Spark's
    worker = RuntimeError("PythonException: ... recsys.io.StorageRefusedError: read-only "
                          "file system at file:///r/part-3.parquet\n")
    assert io.storage_refused(worker) == "read-only file system at file:///r/part-3.parquet"
    said = io.StorageRefusedError("permission denied at /r/z")
    assert io.storage_refused(said) == str(said)
    # not refusals: a full disk, the project's own errors, other failures
    assert io.storage_refused(OSError(28, "No space left on device")) is None
    assert io.storage_refused(ConfigError("cannot write under /r (Read-only file system)")) \
        is None
    assert io.storage_refused(ValueError("Permission denied is a film title")) is None
    # Hadoop's "Mkdirs failed" says no reason: the place is looked at, as the job sees it
    root = tmp_path / "art"
    (root / "preprocess").mkdir(parents=True)
    mkdirs = MKDIRS.format(root)
    assert io.storage_refused(RuntimeError(mkdirs)) is None  # writable: not a refusal
    assert refusal_in(run_read_only, mkdirs, root) == \
        f"read-only file system at file:{root}/preprocess/r1/movies"
    (root / "preprocess").chmod(0o555)  # the nearest directory there is
    try:
        assert refusal_in(run_unprivileged, mkdirs) == \
            f"permission denied at file:{root}/preprocess/r1/movies"
    finally:
        (root / "preprocess").chmod(0o755)


def test_a_root_remounted_read_only_while_training_is_said_in_one_line(small_trained, job_env,
                                                                        tmp_path):
    """The check before the work passed, then the disk went read-only (a remount after
    errors): training used to end with exit 1 and pyarrow's traceback when it copied
    the model."""
    root = os.path.dirname(os.path.dirname(io.local_path(small_trained.run_dir)))
    before = sorted(p for p in Path(root).rglob("*"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = run_read_only_from(
        [sys.executable, str(REPO / "jobs/train.py"), "--artifact-root", root,
         "--preprocess-run", small_trained.manifest["inputs"]["preprocess_run"],
         "--set", "train.epochs=2"],
        Path(root), f"{tmp}/recsys-train-*/tensorboard", env={**job_env, "TMPDIR": str(tmp)})
    said = done.stdout + done.stderr
    assert REMOUNTED in done.stderr, said[-3000:]  # during training
    assert done.returncode == 4, said[-3000:]
    line = last_line(done.stderr)
    assert re.fullmatch(rf"train: artifact storage error: read-only file system at "
                        rf"{re.escape(root)}/train/\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}"
                        + re.escape(REFUSED_LINE), line), line
    assert "Traceback" not in said
    assert "could not record the failure" in said  # its record, too, was refused
    assert sorted(p for p in Path(root).rglob("*")) == before
    assert os.listdir(tmp) == []  # the model staged for the copy is gone


def test_a_root_remounted_read_only_between_sparks_writes_is_said_in_one_line(tmp_path,
                                                                               job_env):
    """Spark's writer (Hadoop's local filesystem) says only "Mkdirs failed to create", with
    no reason: preprocess used to end with exit 1 and Py4J's traceback of it."""
    root = tmp_path / "art"
    root.mkdir()
    done = run_read_only_from(
        [sys.executable, str(REPO / "jobs/preprocess.py"), "--conf-file",
         str(REPO / "conf/default.toml"), "--artifact-root", str(root)],
        root, f"{root}/preprocess/2*/splits/_SUCCESS", env=job_env)
    said = done.stdout + done.stderr
    assert REMOUNTED in done.stderr, said[-3000:]
    assert done.returncode == 4, said[-3000:]
    line = last_line(done.stderr)
    assert re.fullmatch(rf"preprocess: artifact storage error: read-only file system at "
                        rf"file:{re.escape(str(root))}/preprocess/\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}"
                        rf"/movies" + re.escape(REFUSED_LINE), line), line
    assert "Traceback" not in said
