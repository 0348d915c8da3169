"""Fetching an official MovieLens release from GroupLens, verified by its published MD5.

Fails fast without a network: every request has a short connect/read timeout and any
connection error becomes a :class:`DownloadError` that says what could not be reached.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from recsys.config import ConfigError
from recsys.data.errors import InputDataError

log = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
RELEASES = ("ml-25m", "ml-20m", "ml-latest", "ml-latest-small", "ml-10m", "ml-1m", "ml-100k")


class DownloadError(InputDataError):
    """The release could not be fetched or did not match its checksum."""


def _open(url: str, timeout: float):  # noqa: ANN202
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https/http only)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {url}: {reason}. This machine seems to have no network access; "
            "download the release elsewhere and pass its .zip or directory with --input."
        ) from None


def expected_md5(release: str, *, base_url: str = BASE_URL, timeout: float = 10.0) -> str:
    url = f"{base_url.rstrip('/')}/{release}.zip.md5"
    with _open(url, timeout) as resp:
        text = resp.read(4096).decode("ascii", errors="replace").strip()
    token = text.split()[0] if text else ""
    if len(token) != 32 or any(c not in "0123456789abcdef" for c in token.lower()):
        raise DownloadError(f"{url} does not hold an MD5 checksum: {text[:80]!r}")
    return token.lower()


def download_release(
    release: str,
    dest_dir: str,
    *,
    base_url: str = BASE_URL,
    timeout: float = 10.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> str:
    """Download ``<release>.zip`` into ``dest_dir`` and verify its MD5; returns the path.

    A zip already there with the right checksum is not downloaded again.
    """
    if release not in RELEASES:
        raise DownloadError(f"unknown release {release!r}; choose one of {', '.join(RELEASES)}")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"--timeout must be a finite number of seconds > 0, got {timeout!r}")
    md5 = expected_md5(release, base_url=base_url, timeout=timeout)
    try:
        os.makedirs(dest_dir, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the download directory {dest_dir}: {exc}") from None
    target = os.path.join(dest_dir, f"{release}.zip")
    if os.path.isfile(target) and _md5_file(target) == md5:
        log.info("%s already present and verified", target)
        return target
    url = f"{base_url.rstrip('/')}/{release}.zip"
    part = target + ".part"
    digest = hashlib.md5()
    with _open(url, timeout) as resp, _writable(part) as out:
        total = resp.headers.get("Content-Length")
        total_n = int(total) if total and total.isdigit() else None
        done = 0
        while True:
            try:
                chunk = resp.read(1 << 20)
            except (socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
                raise DownloadError(
                    f"download of {url} broke off after {done} bytes: {exc}") from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as exc:  # a full disk, a quota
                out.close()
                os.remove(part)
                raise DownloadError(f"cannot write {part} after {done} bytes: {exc}; "
                                    "partial file removed") from None
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total_n)
    got = digest.hexdigest()
    if got != md5:
        os.remove(part)
        raise DownloadError(f"{url}: MD5 mismatch (got {got}, expected {md5}); file removed")
    os.replace(part, target)
    return target


def _writable(path: str):  # noqa: ANN202
    try:
        return open(path, "wb")
    except OSError as exc:
        raise DownloadError(f"cannot write {path}: {exc}") from None


def _md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def print_progress(done: int, total: int | None) -> None:
    if total:
        sys.stderr.write(f"\r{done / 2**20:8.1f} / {total / 2**20:.1f} MiB ({done / total:5.1%})")
    else:
        sys.stderr.write(f"\r{done / 2**20:8.1f} MiB")
    sys.stderr.flush()
