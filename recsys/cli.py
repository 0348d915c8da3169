"""Shared plumbing for the thin ``jobs/*.py`` entry points: logging and exit codes.

A known failure (bad input, bad configuration, missing artifact) prints one clear line
and exits with a code that tells what failed; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from recsys.artifacts import ArtifactError
from recsys.config import ConfigError
from recsys.data.errors import InputDataError
from recsys.io import ArtifactIOError
from recsys.publish import CatalogUnavailableError
from recsys.spark import SparkStartError

#: Exit codes shared by every job (the nightly pipeline adds its own per stage).
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_ARTIFACT = 4
EXIT_CATALOG = 5
EXIT_SPARK_START = 6

_KNOWN: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, EXIT_CONFIG, "configuration error"),
    (InputDataError, EXIT_INPUT, "input data error"),
    (ArtifactError, EXIT_ARTIFACT, "artifact error"),
    (ArtifactIOError, EXIT_ARTIFACT, "artifact storage error"),
    (CatalogUnavailableError, EXIT_CATALOG, "catalog error"),
    (SparkStartError, EXIT_SPARK_START, "Spark did not start"),
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


def run_main(name: str, body: Callable[[], int | None]) -> int:
    """Run a job body, mapping known errors to a message and an exit code."""
    try:
        return int(body() or EXIT_OK)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        for kind, code, label in _KNOWN:
            if isinstance(exc, kind):
                print(f"{name}: {label}: {exc}", file=sys.stderr)
                return code
        raise


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
