"""Real filesystems that refuse a job, for tests, each in a private user namespace
(``unshare``, which needs no privileges where user namespaces are enabled, as on the
project's machines), so a job meets the kernel's own errors, from Python, from pyarrow
and from the JVM alike:

- :func:`run_on_small_fs`: a small tmpfs that fills up (ENOSPC);
- :func:`run_read_only`: a directory bind-mounted read-only over itself (EROFS);
- :func:`run_read_only_from`: the same, from the moment a file appears (a disk remounted
  read-only while a job runs, after its checks passed);
- :func:`run_unprivileged`: no capabilities over the host's files, so their permission
  bits bind (EACCES) even when the tests run as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
set -u
mount -t tmpfs -o "$1" tmpfs "$2" || exit 97
cd "$2"
eval "$3" || exit 98
shift 3
"$@"
rc=$?
echo "=== files left"
find "$PWD" -type f -printf '%s %p\\n'
exit $rc
"""


@dataclass
class FullRun:
    returncode: int
    stdout: str
    stderr: str
    left: dict[str, int]  # path -> size of every file on the small filesystem afterwards


def run_on_small_fs(cmd: list[str], mountpoint: Path, size: str, *, prepare: str = "true",
                    env: dict[str, str] | None = None, timeout: float = 600,
                    noexec: bool = False) -> FullRun:
    """Run ``cmd`` with a ``size`` tmpfs (e.g. "300k") mounted at ``mountpoint``, after the
    shell command ``prepare`` (run in the mountpoint, e.g. to copy a run into it);
    ``noexec``: mounted so, as a hardened ``/tmp`` is. The filesystem and what is on it go
    with the namespace when the command ends."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [_unshare(), "--user", "--map-root-user", "--mount", "sh", "-c", _SCRIPT, "sh",
         f"size={size}" + (",noexec" if noexec else ""), str(mountpoint), prepare, *cmd],
        env=env if env is not None else dict(os.environ), capture_output=True, text=True,
        timeout=timeout)
    if done.returncode in (97, 98):
        raise RuntimeError(f"could not set up the small filesystem at {mountpoint} (exit "
                           f"{done.returncode}; user namespaces are needed): {done.stderr}")
    out, _, listing = done.stdout.partition("=== files left\n")
    left = {}
    for line in listing.splitlines():
        size_text, _, path = line.partition(" ")
        left[path] = int(size_text)
    return FullRun(done.returncode, out, done.stderr, left)


def _unshare() -> str:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("these tests need unshare (util-linux) and user namespaces")
    return unshare


_READ_ONLY = """
mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97
shift
exec "$@"
"""


def run_read_only(cmd: list[str], directory: Path, *, env: dict[str, str] | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``directory`` read-only (a read-only bind mount over itself, as a
    read-only NFS export or a remounted disk): every write under it fails with EROFS,
    for this command only."""
    return _in_mount_namespace(_READ_ONLY, [str(directory), *cmd], directory, env, timeout)


def _in_mount_namespace(script: str, args: list[str], directory: Path,
                        env: dict[str, str] | None, timeout: float
                        ) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [_unshare(), "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *args],
        env=env if env is not None else dict(os.environ), capture_output=True, text=True,
        timeout=timeout)
    if done.returncode == 97:
        raise RuntimeError(f"could not bind-mount {directory} (user namespaces are "
                           f"needed): {done.stderr}")
    return done


_READ_ONLY_FROM = """
set -u
dir=$1; when=$2; shift 2
mount --bind "$dir" "$dir" || exit 97
(
  while ! ls -d $when >/dev/null 2>&1; do sleep 0.05; done
  tries=0  # a remount waits while a file there is open for writing
  until mount -o remount,bind,ro "$dir" 2>/dev/null; do
    tries=$((tries + 1)); [ $tries -lt 400 ] || { echo "=== could not remount" >&2; exit; }
    sleep 0.05
  done
  echo "=== read-only from here" >&2
) &
watcher=$!
"$@"
rc=$?
kill $watcher 2>/dev/null
exit $rc
"""

#: What :func:`run_read_only_from` writes to stderr when the directory became read-only.
REMOUNTED = "=== read-only from here"


def run_read_only_from(cmd: list[str], directory: Path, when: str, *,
                       env: dict[str, str] | None = None, timeout: float = 600
                       ) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``directory`` writable until a path matching the shell pattern
    ``when`` exists, then read-only (remounted, as a disk with errors is): what the job
    writes there after that fails with EROFS. Its stderr holds :data:`REMOUNTED` once the
    directory is read-only."""
    return _in_mount_namespace(_READ_ONLY_FROM, [str(directory), when, *cmd], directory,
                               env, timeout)


def run_unprivileged(cmd: list[str], *, env: dict[str, str] | None = None,
                     timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a new user namespace that maps no user: it holds no capability over
    the host's files, so a file's permission bits bind as for the ordinary user a job runs
    as (``chmod 000`` denies it even when the tests run as root)."""
    return subprocess.run([_unshare(), "--user", *cmd],
                          env=env if env is not None else dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)
