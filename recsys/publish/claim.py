"""One scoring run publishes a night at a time (DESIGN §8, "two runs at once").

Before a run stages anything it claims the night: it creates
``<tables>/_staging/<table>/run_date=<date>.claim`` beside the night's staging
directories, a small JSON file naming the run, the host, the process and the time. A
second run of the same night (one started by hand while the nightly's runs) finds the claim
and stops at once with :class:`NightClaimedError`; without the claim it would clear the
first run's staged files as left-overs and both would fail. The claim is removed when
its run ends, whether it succeeded or failed.

A run killed outright (SIGKILL, a lost machine) cannot remove its claim. On the same
host the next run sees that the process is gone (its id no longer runs, or runs a later
process) and takes the claim over; a claim from another host names the file to remove,
and the nightly's retention removes it once its run is a day old (``retention``).

The claim is created atomically: a hard link on a local filesystem (an exclusive create
where the filesystem has no links), a rename on HDFS; each fails when the claim exists.
An object store that can do neither gets a check-then-write, which leaves a narrow window.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import socket
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from recsys import io
from recsys.publish import side_dir
from recsys.spark import process_alive, process_start

log = logging.getLogger(__name__)


class NightClaimedError(RuntimeError):
    """Another run is publishing the same night of the same tables."""


def claim_uri(table_uri: str, run_date: str) -> str:
    return io.join(side_dir(table_uri, "staging"), f"run_date={run_date}.claim")


def _running(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` of this host, started at ``started``, still runs."""
    if not process_alive(pid):
        return False
    now = process_start(pid)
    return started is None or now is None or now == started


def _owner(run_id: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"run_id": run_id, "host": socket.gethostname(), "pid": pid,
            "process_start": process_start(pid),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def read_claim(uri: str) -> dict[str, Any] | None:
    """The claim's owner; None when the claim is gone; ``{}`` when it cannot be read."""
    if not io.exists(uri):
        return None
    try:
        owner = json.loads(io.read_text(uri))
    except io.ArtifactIOError:
        return None  # removed since
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


#: A filesystem without hard links (FAT, some network mounts) says one of these.
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def _create_exclusive(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True


def _create(uri: str, owner: dict[str, Any]) -> bool:
    """Create the claim holding ``owner``; False when a claim is already there."""
    text = json.dumps(owner, indent=2) + "\n"
    tmp = f"{uri}.{owner['run_id']}.{uuid.uuid4().hex[:6]}.tmp"
    io.makedirs(uri.rsplit("/", 1)[0])
    io.write_text(tmp, text)
    try:
        if io.is_local(uri):
            try:
                os.link(io.local_path(tmp), io.local_path(uri))  # the claim appears whole
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                return _create_exclusive(io.local_path(uri), text)
            return True
        if io.exists(uri):
            return False
        try:
            io.move(tmp, uri)  # HDFS: a rename onto an existing file fails
        except OSError:
            if io.exists(uri):
                return False
            raise
        return (read_claim(uri) or {}).get("run_id") == owner["run_id"]
    finally:
        if io.exists(tmp):
            io.delete(tmp)


def _busy(uri: str, run_date: str, owner: dict[str, Any]) -> NightClaimedError:
    if not owner:
        return NightClaimedError(
            f"the night {run_date} is claimed by {uri}, which cannot be read: if no "
            "scoring run of that night is running, remove it and run again")
    here = owner.get("host") == socket.gethostname()
    where = "on this host" if here else f"on host {owner.get('host')}"
    what = (f"run {owner.get('run_id')} (process {owner.get('pid')} {where}, since "
            f"{owner.get('since')})")
    if here:
        return NightClaimedError(
            f"the night {run_date} is being published by {what}: wait for it to finish "
            "(two runs of one night would each clear the other's staged files)")
    return NightClaimedError(
        f"the night {run_date} is being published by {what}: wait for it to finish; if "
        f"that run is no longer running, remove {uri} and run again (the nightly's "
        "retention removes it once that run is a day old)")


def _stale(owner: dict[str, Any]) -> bool:
    """A claim whose run was killed on this host: its process is gone."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = owner.get("process_start")
    return not _running(pid, started if isinstance(started, int) else None)


@contextmanager
def claim_night(table_uri: str, run_date: str, run_id: str) -> Iterator[str]:
    """Hold the claim on ``run_date`` of the tables beside ``table_uri`` for the block;
    raises :class:`NightClaimedError` when another run holds it. Yields the claim's URI."""
    uri = claim_uri(table_uri, run_date)
    owner = _owner(run_id)
    while not _create(uri, owner):
        held = read_claim(uri)
        if held is None:
            continue  # released between the two looks
        if not _stale(held):
            raise _busy(uri, run_date, held)
        log.warning("taking over the claim on the night %s from run %s: its process %s "
                    "on this host is no longer running", run_date, held.get("run_id"),
                    held.get("pid"))
        if read_claim(uri) == held:
            io.delete(uri)
    try:
        yield uri
    except BaseException:
        try:
            _release(uri, run_id)
        except OSError as also:  # never hide the run's own error behind this one
            log.warning("could not release the claim %s (%s): the next run of the night "
                        "takes it over, as its process is gone", uri, io.strerror(also))
        raise
    _release(uri, run_id)


def _release(uri: str, run_id: str) -> None:
    held = read_claim(uri)
    if held and held.get("run_id") == run_id:
        io.delete(uri)
