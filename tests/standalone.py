"""A real Spark standalone cluster on localhost for tests: one master and N workers, each
its own JVM started with ``spark-class`` from the pip ``pyspark`` package."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def standalone_cluster(work: Path, *, workers: int = 2, cores: int = 1, memory: str = "2g",
                       timeout: float = 120) -> Iterator[str]:
    """Start a master and ``workers`` workers; yield the ``spark://`` URL; stop them all."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1",
               SPARK_LOG_DIR=str(work / "logs"), SPARK_NO_DAEMONIZE="1")
    spark_class = str(home / "bin" / "spark-class")
    port, web = _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    work.mkdir(parents=True, exist_ok=True)

    def start(name: str, *args: str) -> None:
        log = open(work / f"{name}.log", "wb")
        procs.append(subprocess.Popen([spark_class, *args], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
              "--port", str(port), "--webui-port", str(web))
        for i in range(workers):
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                  "--cores", str(cores), "--memory", memory, "--webui-port", str(_free_port()),
                  "--work-dir", str(work / f"worker{i}"), url)
        deadline = time.time() + timeout
        while _alive_workers(web) < workers:
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.time() > deadline:
                logs = "\n".join((work / f).read_text(errors="replace")[-2000:]
                                 for f in sorted(os.listdir(work)) if f.endswith(".log"))
                raise RuntimeError(f"standalone cluster did not come up:\n{logs}")
            time.sleep(0.5)
        yield url
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
