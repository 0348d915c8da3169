"""What every benchmark script shares: run a command, time it, sample the peak RSS of its
whole process tree (every 0.2 s), and describe the machine."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_gib: float


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # the command just ended
        return 0
    for p in family:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    print("running:", " ".join(cmd), flush=True)
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(ps))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    return Measured(rc, round(wall, 1), round(peak / 2**30, 2))


def write_result(result: dict, out: str | None, name: str) -> Path:
    """Write ``result`` as JSON to ``out``, or to ``bench-results/<name>`` when ``out`` is
    None, and say where."""
    path = Path(out or REPO / "bench-results" / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def has_run(root: str, stage: str) -> bool:
    """Whether artifact root ``root`` holds a committed run of ``stage``."""
    from recsys import artifacts, io

    return io.exists(io.join(io.normalize_uri(root), stage, artifacts.LATEST))


def machine() -> dict[str, str]:
    return {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB "
                   f"RAM, {platform.processor() or platform.machine()}",
    }


def spark_submit_cmd(python: str, driver_memory: str, *, class_archive: str | None = None,
                     java_options: tuple[str, ...] = ()) -> list[str]:
    """``spark-submit --master local[2]`` with the project's log settings. With
    ``class_archive``, the driver JVM maps that class-data sharing archive (JDK AppCDS),
    or writes it when it exits if it does not exist yet, as the nightly does
    (:func:`recsys.nightly.class_archive_flags`; README "Faster JVM start");
    ``java_options`` are more driver JVM options."""
    from recsys.nightly import class_archive_flags

    java = [f"-Dlog4j2.configurationFile={REPO / 'conf/log4j2.properties'}", *java_options,
            *(class_archive_flags(class_archive) if class_archive else [])]
    return [str(Path(python).parent / "spark-submit"), "--master", "local[2]",
            "--driver-memory", driver_memory, "--driver-java-options", " ".join(java)]


def job_env(python: str) -> dict[str, str]:
    return dict(os.environ, PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python,
                TF_USE_LEGACY_KERAS="1")
