"""Versioned artifacts under one root, each with a manifest.

Layout: ``<root>/<stage>/<run_id>/`` holds one stage's outputs plus ``config.toml``,
``manifest.json`` and ``_SUCCESS``; ``<root>/<stage>/LATEST`` names the newest completed
run and is rewritten only after ``_SUCCESS``. A run that dies half-way leaves a directory
without ``_SUCCESS`` that no reader picks up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import re
import time
import uuid
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterator

from recsys import io
from recsys.config import Config, ConfigError, dump_toml, time_zone
from recsys.version import __version__

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
CONFIG = "config.toml"
LATEST = "LATEST"

_PACKAGES = (
    "pyspark", "tensorflow", "tf-keras", "tensorflow-recommenders", "scann", "numpy",
    "pandas", "pyarrow",
)


class ArtifactError(RuntimeError):
    """A required artifact is missing, incomplete or does not match its manifest."""


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_date(value: str | None = None, *, timezone: str = "UTC",
             now: dt.datetime | None = None) -> str:
    """The night a run publishes (its tables' ``run_date`` partition): ``value`` checked
    as a calendar date written ``YYYY-MM-DD``, or, when None, the date ``now`` (default:
    this instant) in ``timezone`` (``score.run_date_timezone``: "UTC", "local" or an IANA
    name)."""
    if value is None:
        instant = now or dt.datetime.now(dt.timezone.utc)
        return instant.astimezone(time_zone(timezone, "score.run_date_timezone")
                                  ).date().isoformat()
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        day = None
    if day is None or day.isoformat() != value:
        raise ConfigError(f"--run-date must be a date written YYYY-MM-DD, got {value!r}")
    return value


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "recsys": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_checksums(uri: str, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Relative path, size and MD5 of every file below ``uri``."""
    out = []
    for entry in io.list_files(uri):
        name = entry.relpath.rsplit("/", 1)[-1]
        if entry.relpath in exclude or name.startswith(".") or name.endswith(".crc"):
            continue
        out.append({"path": entry.relpath, "size": entry.size, "md5": io.md5(entry.uri)})
    return out


class Manifest:
    """What a stage records about one run: config, inputs, counts, timings, versions."""

    def __init__(self, stage: str, run_id: str, config: Config) -> None:
        self.data: dict[str, Any] = {
            "stage": stage,
            "run_id": run_id,
            "status": "running",
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "inputs": {},
            "counts": {},
            "timings_s": {},
            "versions": library_versions(),
        }
        self._t0 = time.perf_counter()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data["timings_s"][name] = round(time.perf_counter() - start, 3)

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.data["timings_s"]["total"] = round(time.perf_counter() - self._t0, 3)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n"


def stage_dir(root: str, stage: str, run_id: str) -> str:
    return io.join(root, stage, run_id)


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _plain_run_id(run_id: str) -> bool:
    """A name of one directory under ``<root>/<stage>/``, other than ``LATEST``."""
    return run_id != LATEST and _RUN_ID.match(run_id) is not None


def claim_run(root: str, stage: str, run_id: str | None = None) -> tuple[str, str]:
    """``(run_id, run_dir)`` for a new run of ``stage``: a new id when None, else the
    given one, checked. A run id names one directory under ``<root>/<stage>/``, so it
    is a plain name (no ``/`` or ``..``, not ``LATEST``), and a run that exists, done or
    failed, is never written again: readers and later stages may hold it."""
    if run_id is None:
        run_id = new_run_id()
    elif not _plain_run_id(run_id):
        raise ConfigError(
            f"--run-id must be a plain name of letters, digits, '.', '_' and '-' (at most "
            f"128, not starting with '.' or '-', not {LATEST}), got {run_id!r}")
    run_dir = stage_dir(root, stage, run_id)
    if io.exists(run_dir):
        raise ConfigError(f"{stage} run {run_id} already exists at {run_dir}; a run is never "
                          "overwritten: give another --run-id, or none for a new one")
    return run_id, run_dir


def check_writable(root: str, stage: str) -> None:
    """Refuse to start a ``stage`` run that could not be written under ``root`` (a
    read-only mount, a directory of another user, a file in the way): a configuration
    error naming the place, before the stage reads, trains or scores anything. A full
    disk (:class:`recsys.io.StorageFullError`) and a filesystem that cannot be opened
    stay storage errors."""
    where = io.join(root, stage)
    try:
        io.check_writable(where)
    except OSError as exc:
        if isinstance(exc, io.ArtifactIOError) and not isinstance(exc, io.StorageRefusedError):
            raise  # a full disk, a filesystem that cannot be reached
        raise ConfigError(
            f"cannot write under {where} ({io.strerror(exc)}): set artifact_root (--artifact-root) "
            "to a place this job can write") from None


def write_failed(run_dir: str, manifest: Manifest, error: BaseException) -> None:
    """Record why a run failed next to what it wrote (no ``_SUCCESS``, LATEST untouched)."""
    manifest["error"] = f"{type(error).__name__}: {error}"
    manifest.finish("failed")
    io.write_text(io.join(run_dir, MANIFEST), manifest.to_json())


@contextmanager
def failure_recorded(run_dir: str, manifest: Manifest, *, only_if_started: bool = False,
                     scratch: str | None = None, spark_scratch: str | None = None
                     ) -> Iterator[None]:
    """Any error inside marks the run failed (its manifest, no ``_SUCCESS``), then
    propagates. ``only_if_started``: not when the run's directory was never created.
    A full disk is raised as :class:`recsys.io.StorageFullError`, naming the place (or
    the run's directory and ``scratch``, the job's local temporary directory, when the
    error does not say; ``spark_scratch``, Spark's local directories, when the JVM's stack
    shows its shuffle or spill files), and what the run wrote is removed but its
    manifest. A filesystem that refused the job (read-only, no permission) is raised as
    :class:`recsys.io.StorageRefusedError`, naming the place."""
    try:
        yield
    except BaseException as exc:
        storage = io.storage_error(exc, places=f"under {run_dir}" + (
            f" and in its temporary directory {scratch} (TMPDIR)" if scratch else ""),
            spark_scratch=spark_scratch)
        # Ctrl-C stays as it is
        error = storage if storage is not None and isinstance(exc, Exception) else exc
        if not only_if_started or io.exists(run_dir):
            try:
                if isinstance(storage, io.StorageFullError):
                    # What it wrote cannot be used and holds the space the next run needs
                    # (and the failed manifest below): only the manifest is kept.
                    for name in io.list_dir(run_dir):
                        if name != MANIFEST:
                            io.delete(io.join(run_dir, name))
                write_failed(run_dir, manifest, error)
            except OSError as also:  # never hide the run's own error behind this one
                log.warning("could not record the failure in %s: %s", run_dir, also)
        if error is exc:
            raise
        raise error from exc


def commit(root: str, stage: str, run_dir: str, manifest: Manifest, config: Config) -> None:
    """Seal a run: config, checksummed manifest, ``_SUCCESS``, then the LATEST pointer."""
    io.write_text(io.join(run_dir, CONFIG), dump_toml(config))
    manifest["outputs"] = file_checksums(run_dir, exclude=(MANIFEST, SUCCESS))
    manifest.finish("succeeded")
    io.write_text(io.join(run_dir, MANIFEST), manifest.to_json())
    io.write_text(io.join(run_dir, SUCCESS), "")
    io.write_text(io.join(root, stage, LATEST), manifest["run_id"] + "\n")


def resolve(root: str, stage: str, run_id: str | None = None) -> str:
    """The directory of a completed run of ``stage`` (the latest one by default)."""
    pointer = None
    if run_id is None:
        pointer = io.join(root, stage, LATEST)
        if not io.is_file(pointer):
            raise ArtifactError(
                f"no completed '{stage}' run under {io.normalize_uri(root)}: "
                f"run the {stage} job first"
            )
        run_id = io.read_text(pointer).strip()
    run_dir = stage_dir(root, stage, run_id)
    if not _plain_run_id(run_id) or not io.is_dir(run_dir):
        if pointer is not None:
            raise ArtifactError(
                f"{pointer} names {run_id!r}, which is not a '{stage}' run there (the pointer "
                f"was emptied or edited, or the run removed by hand): run the {stage} job "
                "again, or name a run of it")
        raise ArtifactError(f"there is no '{stage}' run {run_id!r} under "
                            f"{io.join(io.normalize_uri(root), stage)}")
    if not io.is_file(io.join(run_dir, SUCCESS)):
        raise ArtifactError(f"'{stage}' run {run_id} at {run_dir} is incomplete (no {SUCCESS})")
    return run_dir


def read_manifest(run_dir: str) -> dict[str, Any]:
    return json.loads(io.read_text(io.join(run_dir, MANIFEST)))


def verify(run_dir: str) -> dict[str, Any]:
    """Check every output file of a completed run against its manifest (size and MD5).

    Returns the manifest; raises :class:`ArtifactError` naming the first file that is
    missing, truncated or altered, so a corrupt artifact is refused before it is used.
    """
    if not io.is_file(io.join(run_dir, SUCCESS)):
        raise ArtifactError(f"{run_dir} is incomplete (no {SUCCESS})")
    manifest = read_manifest(run_dir)
    for entry in manifest.get("outputs", []):
        uri = io.join(run_dir, entry["path"])
        if not io.is_file(uri):
            raise ArtifactError(f"{uri} is missing (listed in {run_dir}/{MANIFEST})")
        if io.size(uri) != entry["size"]:
            raise ArtifactError(
                f"{uri} has {io.size(uri)} bytes, the manifest says {entry['size']}: truncated "
                f"or replaced")
        if io.md5(uri) != entry["md5"]:
            raise ArtifactError(f"{uri} does not match its MD5 in the manifest: corrupt or altered")
    return manifest
