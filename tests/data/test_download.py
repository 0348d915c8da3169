"""The download command: verified by MD5 against a local HTTP server, and failing fast
without a network."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from recsys.data.download import DownloadError, download_release

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_verifies_md5(server, tmp_path):
    root, url = server
    payload = b"PK fake zip payload" * 1000
    (root / "ml-100k.zip").write_bytes(payload)
    (root / "ml-100k.zip.md5").write_text(hashlib.md5(payload).hexdigest() + "  ml-100k.zip\n")
    seen = []
    path = download_release("ml-100k", str(tmp_path / "dl"), base_url=url,
                            progress=lambda d, t: seen.append((d, t)))
    assert Path(path).read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload))


def test_md5_mismatch_removes_the_file(server, tmp_path):
    root, url = server
    (root / "ml-1m.zip").write_bytes(b"corrupted")
    (root / "ml-1m.zip.md5").write_text("0" * 32 + "  ml-1m.zip\n")
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_release("ml-1m", str(tmp_path / "dl"), base_url=url)
    assert list((tmp_path / "dl").iterdir()) == []


def test_unknown_release(tmp_path):
    with pytest.raises(DownloadError, match="unknown release"):
        download_release("ml-2m", str(tmp_path))


def test_job_fails_fast_without_network(tmp_path):
    # Port 9 (discard) on localhost is closed here: the connection is refused at once. The
    # real GroupLens URL is the default; this build machine has no network either way.
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/download_movielens.py"), "ml-25m",
         "--dest", str(tmp_path), "--base-url", "http://127.0.0.1:9/", "--timeout", "5"],
        capture_output=True, text=True, timeout=60,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 3
    assert "cannot reach http://127.0.0.1:9/ml-25m.zip.md5" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--base-url", "mirror.example.org/movielens"],
     "--base-url must be an http:// or https:// URL, got 'mirror.example.org/movielens'"),
    (["--base-url", "ftp://mirror.example.org/"], "--base-url must be an http:// or https://"),
    (["--timeout", "0"], "--timeout must be a finite number of seconds > 0, got 0.0"),
    (["--timeout", "nan"], "--timeout must be a finite number of seconds > 0, got nan"),
])
def test_job_refuses_bad_options_before_any_request(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/download_movielens.py"), "ml-100k",
         "--dest", str(tmp_path / "dl"), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert f"download_movielens: configuration error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "dl").exists()


def test_a_destination_that_cannot_be_written_is_said_so(server, tmp_path):
    root, url = server
    payload = b"PK payload"
    (root / "ml-100k.zip").write_bytes(payload)
    (root / "ml-100k.zip.md5").write_text(hashlib.md5(payload).hexdigest() + "\n")
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(DownloadError, match="cannot create the download directory .*a-file/dl"):
        download_release("ml-100k", str(tmp_path / "a-file" / "dl"), base_url=url)
    (tmp_path / "dl" / "ml-100k.zip.part").mkdir(parents=True)  # where the file would go
    with pytest.raises(DownloadError, match=r"cannot write .*ml-100k.zip.part: \[Errno 21\]"):
        download_release("ml-100k", str(tmp_path / "dl"), base_url=url)
