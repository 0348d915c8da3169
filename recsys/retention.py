"""Retention: what the nightly keeps under the artifact root and in its log directory.

Every night writes a new run of each stage (``<root>/<stage>/<run_id>/``), a summary
(``<root>/nightly/<run_id>/``) and a log file; unpruned, the root grows by a preprocess,
train and index run a night (the preprocess run alone: 222 MB at ml-25m scale).
:func:`prune` keeps:

* for each stage, the ``keep`` newest completed runs (with ``_SUCCESS``);
* every run still in use, whatever its age: the run each stage's ``LATEST`` names, and the
  runs those were made from, followed through their manifests' inputs (the score run's
  histories, model and index; the index run's model; the train run's histories), so a
  model kept for weeks (``nightly.max_model_age_hours``) keeps its own preprocess run;
* incomplete runs (no ``_SUCCESS``: failed, killed, or being written by a job running now)
  newer than the oldest completed run kept, or started less than ``grace_hours`` ago (the
  run id is its start time): a failure stays there to be read, and a job started by hand
  beside the nightly is not pulled from under it;
* the ``keep`` newest nightly summaries and ``nightly-<run_id>.log`` files (of this
  root's nights: a log directory shared with nightlies of other roots keeps theirs);
* anything whose name is not a run id this project makes (``YYYYmmddTHHMMSSZ-xxxxxx``),
  e.g. a run named with ``--run-id``: never touched;
* of the zips extracted under ``<root>/_inputs/`` (a nightly whose ``data.input`` is a zip
  that changes upstream extracts a new one each night: about 1 GiB at ml-25m), the one the
  latest preprocess run read (tomorrow's zip may be the same) and any a run took less
  than ``grace_hours`` ago (a job started by hand may be reading it); one still being
  extracted (no marker yet) is left alone too.

The published nights of the tables are not touched: they belong to their readers. What a
scoring run that failed left staged (``<tables>/_staging/``: a whole night of files, which
only a later run of the *same* night would clear) goes once it is ``grace_hours`` old, and
so does a night's claim that such a run left (one killed on another host: a run on this
host takes over a claim whose process is gone, but cannot tell for another host's).
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable

from recsys import artifacts, io
from recsys.data.release import EXTRACTED, INPUTS, extracted_at
from recsys.nightly import STAGES, log_root
from recsys.publish import side_dir
from recsys.publish.claim import read_claim

SUMMARIES = "nightly"
_ID = r"\d{8}T\d{6}Z-[0-9a-f]{6}"  # artifacts.new_run_id's form
RUN_ID = re.compile(rf"^{_ID}$")
_LOG = re.compile(rf"^nightly-({_ID})\.log$")
_STAGED = re.compile(rf"^run_date=\d{{4}}-\d{{2}}-\d{{2}}-({_ID})$")
#: A night's claim (its run id inside), and one a run killed while creating it left.
_CLAIM = re.compile(r"^run_date=\d{4}-\d{2}-\d{2}\.claim$")
_CLAIM_TMP = re.compile(rf"^run_date=\d{{4}}-\d{{2}}-\d{{2}}\.claim\.({_ID})\.[0-9a-f]+\.tmp$")


@dataclass
class Pruned:
    """What :func:`prune` removed (or would remove, on a dry run) and what it kept."""

    removed: list[str] = field(default_factory=list)  # URIs / paths, oldest first per place
    removed_bytes: int = 0
    in_use: list[str] = field(default_factory=list)  # "stage/run_id" kept because in use
    #: Stopped before the end (``prune``'s ``stop``): the rest goes at the next pruning.
    stopped: bool = False
    left: int = 0  # what was to be removed and was not, when stopped
    #: "<uri> (<reason>)" of each one the filesystem refused to remove (another user's,
    #: a read-only mount); the others are removed all the same.
    failed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{len(self.removed)} old runs and logs ({self.removed_bytes / 2**20:,.1f} MiB)"
                + (f", stopped with {self.left} more to remove" if self.stopped else "")
                + (f", {len(self.failed)} could not be removed" if self.failed else "")
                + f"; in use: {', '.join(sorted(self.in_use)) or 'none'}")


def _reference(key: str, value: object) -> tuple[str, str] | None:
    """The (stage, run id) a manifest input names, if it names a run of a stage."""
    if not isinstance(value, str) or not value:
        return None
    if key == "model_version":
        return "train", value
    stage, _, kind = key.rpartition("_")
    if stage in STAGES and kind == "run":
        return stage, value
    if stage in STAGES and kind == "dir":
        return stage, value.rstrip("/").rsplit("/", 1)[-1]
    return None


def runs_in_use(root: str) -> set[tuple[str, str]]:
    """(stage, run id) of every stage's LATEST run and of the runs they were made from."""
    todo = []
    for stage in STAGES:
        pointer = io.join(root, stage, artifacts.LATEST)
        if io.is_file(pointer):
            todo.append((stage, io.read_text(pointer).strip()))
    seen: set[tuple[str, str]] = set()
    while todo:
        stage, run = todo.pop()
        if (stage, run) in seen:
            continue
        seen.add((stage, run))
        run_dir = artifacts.stage_dir(root, stage, run)
        if io.is_file(io.join(run_dir, artifacts.MANIFEST)):  # unreadable JSON raises
            inputs = artifacts.read_manifest(run_dir).get("inputs", {})
            todo.extend(ref for key, value in inputs.items() if (ref := _reference(key, value)))
    return seen


def _size(uri: str) -> int:
    return sum(entry.size for entry in io.list_files(uri)) if io.is_dir(uri) else io.size(uri)


def _stage_victims(root: str, stage: str, keep: int, in_use: set[str],
                   started_before: str) -> list[str]:
    base = io.join(root, stage)
    runs = [name for name in io.list_dir(base) if RUN_ID.match(name)]  # oldest first
    complete = {r for r in runs if io.is_file(io.join(base, r, artifacts.SUCCESS))}
    if len(complete) < keep:
        return []
    floor = sorted(complete)[-keep]  # the oldest completed run kept for being recent
    return [io.join(base, r) for r in runs
            if r < floor and r not in in_use and (r in complete or r < started_before)]


def _beyond(ids: list[str], keep: int, tonight: str | None) -> list[str]:
    """The ids older than the ``keep`` newest, ``tonight`` (whose summary is not written
    yet) counted among those."""
    ids = sorted(set(ids) | ({tonight} if tonight and RUN_ID.match(tonight) else set()))
    return [r for r in ids[:-keep] if r != tonight]


def _stale_extractions(root: str, started_before: str) -> list[str]:
    """The zip extractions under ``<root>/_inputs/`` that neither the latest preprocess
    run read nor a run took since ``started_before`` (a run id: its time stamp is the
    bound); see the module's notes."""
    base = io.join(root, INPUTS)
    names = io.list_dir(base)
    if not names:
        return []
    try:
        latest = artifacts.read_manifest(artifacts.resolve(root, "preprocess"))
    except artifacts.ArtifactError:
        latest = {}
    files = latest.get("inputs", {}).get("files", {})
    read = {posixpath.dirname(f["uri"]) for f in files.values()
            if isinstance(f, dict) and isinstance(f.get("uri"), str)}
    victims = []
    for name in names:
        directory = io.join(base, name)
        marker = io.join(directory, EXTRACTED)
        if directory in read or not io.is_file(marker):
            continue
        if extracted_at(io.read_text(marker)) < started_before[:len("YYYYmmddTHHMMSSZ")]:
            victims.append(directory)
    return victims


def _log_victims(log_dir: str, root: str, keep: int, tonight: str | None) -> list[str]:
    """The nightly logs in ``log_dir`` beyond the ``keep`` newest of this root's nights.
    A log directory can serve nightlies of several artifact roots (the default ``logs``
    of one checkout, a staging and a production configuration): a log whose first line
    names another root is that root's to prune, and counts not among this root's. One
    that names no root (an empty log, its disk full at the start) counts as this root's,
    so that such files do not pile up."""
    ours = []
    for name in os.listdir(log_dir):
        if not (m := _LOG.match(name)):
            continue
        try:
            with open(os.path.join(log_dir, name), encoding="utf-8", errors="replace") as fh:
                owner = log_root(fh.readline(1 << 16), m.group(1))
        except OSError:
            owner = None
        if owner is None or io.normalize_uri(owner) == root:
            ours.append(m.group(1))
    return [os.path.abspath(os.path.join(log_dir, f"nightly-{r}.log"))
            for r in _beyond(ours, keep, tonight)]


def _stale_staging(table_root: str, started_before: str) -> list[str]:
    """``<tables>/_staging/<table>/run_date=<date>-<run_id>`` of runs started before the
    grace, and the claims on a night (``run_date=<date>.claim``) such runs left: a run
    killed on another host, whose claim no later run can tell is abandoned. The tables are
    those with a staging directory: a table's first night that failed staged files for a
    table directory that does not exist yet. A claim that cannot be read stays (its run
    is not known)."""
    out = []
    for table in io.list_dir(io.join(table_root, "_staging")):
        staging = side_dir(io.join(table_root, table), "staging")
        for name in io.list_dir(staging):
            uri = io.join(staging, name)
            run = _STAGED.match(name) or _CLAIM_TMP.match(name)
            run_id = run.group(1) if run else _claimed_by(uri) if _CLAIM.match(name) else ""
            if RUN_ID.match(run_id) and run_id < started_before:
                out.append(uri)
    return out


def _claimed_by(uri: str) -> str:
    owner = read_claim(uri)
    return str(owner.get("run_id", "")) if owner else ""


def prune(root: str, keep: int, *, log_dir: str | None = None, table_root: str = "",
          tonight: str | None = None, dry_run: bool = False, grace_hours: float = 24.0,
          now: dt.datetime | None = None, stop: Callable[[], bool] | None = None) -> Pruned:
    """Remove what the rules above do not keep (nothing with ``dry_run``); ``keep`` >= 1.
    ``tonight``: the nightly run that prunes, one of the ``keep`` summaries and logs;
    ``table_root``: where the tables are (``score.table_root``; "" = ``<root>/tables``);
    ``stop``: asked before each removal; when it says so, the pruning ends there (a
    SIGTERM to the nightly), each run removed whole or not at all. One that the
    filesystem refuses to remove is listed in ``failed`` and the pruning goes on.

    Raises (removing nothing) when a run in use has a manifest that cannot be read: what
    it was made from cannot be known then."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = io.normalize_uri(root)
    # run ids start with their UTC start time, so they compare as times do
    started_before = artifacts.new_run_id(
        (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(hours=grace_hours))
    in_use = runs_in_use(root)
    result = Pruned(in_use=[f"{stage}/{run}" for stage, run in in_use])
    victims: list[str] = []
    for stage in STAGES:
        victims += _stage_victims(root, stage, keep, {r for s, r in in_use if s == stage},
                                  started_before)
    ids = [n for n in io.list_dir(io.join(root, SUMMARIES)) if RUN_ID.match(n)]
    victims += [io.join(root, SUMMARIES, r) for r in _beyond(ids, keep, tonight)]
    victims += _stale_staging(table_root or io.join(root, "tables"), started_before)
    victims += _stale_extractions(root, started_before)
    if log_dir and os.path.isdir(log_dir):
        victims += _log_victims(log_dir, root, keep, tonight)
    for done, uri in enumerate(victims):
        if stop is not None and stop():
            result.stopped, result.left = True, len(victims) - done
            break
        try:
            size = _size(uri)
            if not dry_run:
                _remove(uri)
        except OSError as exc:
            result.failed.append(f"{uri} ({io.strerror(exc)})")
            continue
        result.removed_bytes += size
        result.removed.append(uri)
    return result


def _remove(uri: str) -> None:
    """Remove a run (its ``_SUCCESS`` first: one removed in part is an incomplete run, not
    a completed one with files missing), a zip's extraction (its marker first, likewise:
    the next run of that zip extracts it again), a summary or a log file."""
    if io.is_dir(uri):
        io.delete(io.join(uri, artifacts.SUCCESS))
        io.delete(io.join(uri, EXTRACTED))
    io.delete(uri)
