"""Shared plumbing for the thin ``jobs/*.py`` entry points: logging and exit codes.

A known failure (bad input, bad configuration, missing artifact) prints one clear line
and exits with a code that tells what failed; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable

from recsys.artifacts import ArtifactError
from recsys.config import ConfigError
from recsys.data.errors import InputDataError
from recsys.io import ArtifactIOError, storage_full, storage_refused
from recsys.model.errors import UnusableModelError
from recsys.publish import CatalogUnavailableError
from recsys.publish.claim import NightClaimedError
from recsys.spark import SparkStartError, worker_import_error, worker_python_hint

#: Exit codes shared by every job (the nightly pipeline adds its own per stage).
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_ARTIFACT = 4
EXIT_CATALOG = 5
EXIT_SPARK_START = 6
EXIT_BUSY = 7
EXIT_MODEL = 8
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM

_KNOWN: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, EXIT_CONFIG, "configuration error"),
    (InputDataError, EXIT_INPUT, "input data error"),
    (ArtifactError, EXIT_ARTIFACT, "artifact error"),
    (ArtifactIOError, EXIT_ARTIFACT, "artifact storage error"),
    (CatalogUnavailableError, EXIT_CATALOG, "catalog error"),
    (SparkStartError, EXIT_SPARK_START, "Spark did not start"),
    (NightClaimedError, EXIT_BUSY, "another run"),
    (UnusableModelError, EXIT_MODEL, "model error"),
)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_once_stopping)


#: Set when SIGTERM or Ctrl-C stops the job (:func:`run_main`).
_stopping = threading.Event()


def _quiet_once_stopping(record: logging.LogRecord) -> bool:
    """Py4J logs a traceback on the root logger for every call that a stop cuts short
    (and for each call to the JVM after it, which was stopped beside the job)."""
    return not (_stopping.is_set() and f"{os.sep}py4j{os.sep}" in record.pathname)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what cron, systemd and the nightly send to stop a job), raised in the main
    thread so that the job unwinds as on Ctrl-C: its temporary directories are removed,
    its run is recorded as failed and exit handlers run. Python's default would end the
    process at once and leave all of them behind."""


def _stop(signum: int, frame) -> None:  # noqa: ANN001
    _stopping.set()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one unwinding; SIGKILL ends a stuck one
    raise Terminated()


def _stopped_by(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` was raised by or while unwinding from (cleanup
    that failed, e.g. stopping a Spark driver JVM that was terminated beside the job)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


def run_main(name: str, body: Callable[[], int | None]) -> int:
    """Run a job body, mapping known errors to a message and an exit code; SIGTERM and
    Ctrl-C stop it cleanly (exit 143 and 130)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)
                    if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        return int(body() or EXIT_OK)
    except Exception as exc:
        stop = _stopped_by(exc)
        if stop is not None:
            return _stopped(name, stop)
        full = storage_full(exc)
        if full is not None:  # from any layer: Python, pyarrow, a Spark task, the JVM
            print(f"{name}: artifact storage error: {full}: free space there (or give the "
                  "job a place with room) and run it again", file=sys.stderr)
            return EXIT_ARTIFACT
        refused = storage_refused(exc)
        if refused is not None:  # e.g. remounted read-only after the job's check passed
            print(f"{name}: artifact storage error: {refused}: the filesystem refused this "
                  "job there while it ran; make the place writable for it again (or give "
                  "it another artifact root) and run it again", file=sys.stderr)
            return EXIT_ARTIFACT
        missing = worker_import_error(exc)
        if missing is not None:  # the workers' interpreter, not the job's code
            print(f"{name}: configuration error: Spark's Python workers failed to import "
                  f"what this job needs ({missing}): {worker_python_hint()}",
                  file=sys.stderr)
            return EXIT_CONFIG
        for kind, code, label in _KNOWN:
            if isinstance(exc, kind):
                print(f"{name}: {label}: {exc}", file=sys.stderr)
                return code
        raise
    except KeyboardInterrupt as exc:
        return _stopped(name, exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(name: str, stop: KeyboardInterrupt) -> int:
    if isinstance(stop, Terminated):
        print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    print(f"{name}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
