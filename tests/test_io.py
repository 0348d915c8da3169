from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys import io


def test_normalize_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert io.normalize_uri("a/b") == f"file://{tmp_path}/a/b"
    assert io.normalize_uri("file:///x/y/") == "file:///x/y"
    assert io.normalize_uri("hdfs://nn:8020/data/") == "hdfs://nn:8020/data"
    assert io.normalize_uri("s3a://bucket/key") == "s3a://bucket/key"
    assert io.join("hdfs://nn/data", "/a/", "b") == "hdfs://nn/data/a/b"
    assert io.normalize_uri("file:/x/y") == "file:///x/y"  # as Spark writes them
    assert io.normalize_uri("file://localhost/x/y") == "file:///x/y"


@pytest.mark.parametrize("name", ["run #2", "what?", "100%", "a%20b", "ü é", "a:b"])
def test_a_local_path_is_taken_literally(tmp_path, name):
    """'#' and '?' used to be read as a URI's fragment and query: a root named
    "art #1" was written to "art " (its trailing space kept), silently elsewhere."""
    place = tmp_path / name / "x"
    uri = io.normalize_uri(str(place))
    assert uri == f"file://{place}" and io.local_path(uri) == str(place)
    io.write_text(io.join(uri, "f.txt"), "here")
    assert (place / "f.txt").read_text() == "here"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert io.list_dir(uri) == ["f.txt"] and io.same_place(uri, str(place))
    assert not io.same_place(uri, str(tmp_path / (name + "1") / "x"))


def _open_hdfs(java_home: str) -> subprocess.CompletedProcess:
    """io.exists on an HDFS URI in a fresh interpreter (pyarrow keeps a loaded libjvm)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ARROW_LIBHDFS_DIR", "HADOOP_HOME")}
    env["JAVA_HOME"] = java_home
    code = ("from recsys import io\n"
            "try:\n    io.exists('hdfs://namenode.invalid:8020/x')\n"
            "except io.ArtifactIOError as exc:\n    print(exc)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("a, b, same", [
    ("file:/tmp/a b/t", "/tmp/a b/t/", True),  # how a catalog writes a local place
    ("file:/tmp/a%20b/t", "file:///tmp/a b/t", True),
    ("file:/tmp/run1/tables/t", "/tmp/run2/tables/t", False),
    ("hdfs://nn:8020/data/t", "hdfs:///data/t", True),  # the default namenode
    ("hdfs://nn:8020/data/t", "hdfs://other:8020/data/t", False),
    ("hdfs://nn/data/t", "file:///data/t", False),
    ("file:/tmp/art #1/t", "/tmp/art #2/t", False),  # not both "/tmp/art "
    ("file:/tmp/art%20%231/t", "/tmp/art #1/t", True),
])
def test_same_place(a, b, same):
    assert io.same_place(a, b) is same and io.same_place(b, a) is same


def test_a_directory_through_a_symbolic_link_is_the_same_place(tmp_path):
    """A root given once as /data/... and once as the disk it links to: the score job
    refused the catalog's table as "another artifact root"."""
    (tmp_path / "disk" / "t").mkdir(parents=True)
    (tmp_path / "data").symlink_to(tmp_path / "disk")
    assert io.same_place(f"file:{tmp_path}/data/t", str(tmp_path / "disk" / "t"))
    assert io.same_place(str(tmp_path / "data" / "t"), f"file:{tmp_path}/disk/t/")
    (tmp_path / "disk" / "u").mkdir()
    assert not io.same_place(str(tmp_path / "data" / "u"), str(tmp_path / "disk" / "t"))


@pytest.mark.parametrize("jdk, message", [
    (False, "Unable to load libjvm: set JAVA_HOME to the JDK's directory"),
    (True, "Unable to load libhdfs: set ARROW_LIBHDFS_DIR (or HADOOP_HOME) to where "
           "Hadoop's libhdfs.so is"),
])
def test_hdfs_without_its_native_libraries_is_one_line_saying_what_to_set(tmp_path, jdk,
                                                                           message):
    """Not pyarrow's error as it comes: a line per path its loader tried (ten for libjvm)."""
    java_home = Path(os.path.realpath(shutil.which("java"))).parents[1] if jdk else tmp_path
    proc = _open_hdfs(str(java_home))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ("cannot open a filesystem for hdfs://namenode.invalid:8020/x: "
                           f"{message}\n")
    assert "dlopen" not in proc.stdout + proc.stderr


def test_files_round_trip(tmp_path):
    root = io.normalize_uri(tmp_path)
    target = io.join(root, "x", "y.txt")
    io.write_text(target, "hello\n")
    assert io.read_text(target) == "hello\n"
    assert io.size(target) == 6 and io.is_file(target) and io.is_dir(io.join(root, "x"))
    assert io.md5(target) == hashlib.md5(b"hello\n").hexdigest()
    assert [e.relpath for e in io.list_files(root)] == ["x/y.txt"]
    io.move(io.join(root, "x"), io.join(root, "z"))
    assert io.list_dir(root) == ["z"]
    io.delete(io.join(root, "z"))
    assert not io.exists(io.join(root, "z"))
    io.delete(io.join(root, "z"))  # deleting nothing is fine


def test_missing_file_error(tmp_path):
    with pytest.raises(io.ArtifactIOError, match="file not found"):
        io.read_bytes(str(tmp_path / "none"))


def test_copy_to_local_copies_a_nested_directory_tree(tmp_path):
    src = tmp_path / "run" / "vocab"
    (src / "movies").mkdir(parents=True)
    (src / "movies" / "part-0.parquet").write_bytes(b"m")
    (src / "genres.txt").write_text("Drama\n")
    dest = tmp_path / "copy" / "vocab"
    assert io.copy_to_local(io.normalize_uri(src), str(dest)) == str(dest)
    assert (dest / "movies" / "part-0.parquet").read_bytes() == b"m"
    assert (dest / "genres.txt").read_text() == "Drama\n"
