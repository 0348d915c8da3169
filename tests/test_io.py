from __future__ import annotations

import hashlib

import pytest

from recsys import io


def test_normalize_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert io.normalize_uri("a/b") == f"file://{tmp_path}/a/b"
    assert io.normalize_uri("file:///x/y/") == "file:///x/y"
    assert io.normalize_uri("hdfs://nn:8020/data/") == "hdfs://nn:8020/data"
    assert io.normalize_uri("s3a://bucket/key") == "s3a://bucket/key"
    assert io.join("hdfs://nn/data", "/a/", "b") == "hdfs://nn/data/a/b"


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
