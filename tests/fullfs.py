"""A real full filesystem for tests: a small tmpfs mounted in a private mount namespace
(``unshare --user --map-root-user --mount``, which needs no privileges where user
namespaces are enabled, as on the project's machines), so a job meets the kernel's own
ENOSPC, from Python, from pyarrow and from the JVM alike."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
set -u
mount -t tmpfs -o size="$1" tmpfs "$2" || exit 97
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
                    env: dict[str, str] | None = None, timeout: float = 600) -> FullRun:
    """Run ``cmd`` with a ``size`` tmpfs (e.g. "300k") mounted at ``mountpoint``, after the
    shell command ``prepare`` (run in the mountpoint, e.g. to copy a run into it). The
    filesystem and what is on it go with the namespace when the command ends."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("the full-disk tests need unshare (util-linux) to mount a tmpfs")
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", _SCRIPT, "sh", size,
         str(mountpoint), prepare, *cmd],
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
