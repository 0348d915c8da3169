"""Benchmark: preprocessing of the full-scale corpus, timed as cron runs it.

Runs ``spark-submit jobs/preprocess.py`` on the corpus and reports wall time and the peak
resident memory of the whole process tree (driver JVM + Python), sampled every 0.2 s.
Goal (DESIGN §7): <= 120 s wall, peak RSS <= 8 GiB on 2 cores.

    python benchmarks/bench_preprocess.py --input data/synthetic/ml-25m-synthetic
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--artifact-root", default=None, help="default: a temporary directory")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--out", default=str(REPO / "bench-results" / "preprocess.json"))
    args = p.parse_args()

    root = args.artifact_root or tempfile.mkdtemp(prefix="bench-preprocess-")
    spark_submit = str(Path(sys.executable).parent / "spark-submit")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    cmd = [spark_submit, "--master", "local[2]", "--driver-memory", args.driver_memory,
           "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/log4j2.properties'}",
           str(REPO / "jobs/preprocess.py"), "--input", args.input, "--artifact-root", root]
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
    if rc != 0:
        print(f"preprocess failed with exit code {rc}", file=sys.stderr)
        return rc

    sys.path.insert(0, str(REPO))
    from recsys import artifacts, io

    run_dir = artifacts.resolve(io.normalize_uri(root), "preprocess")
    manifest = artifacts.read_manifest(run_dir)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.processor() or platform.machine()}",
        "input": args.input,
        "ratings": manifest["counts"]["ratings"],
        "users": manifest["counts"]["users"],
        "movies": manifest["counts"]["movies"],
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
        "stage_timings_s": manifest["timings_s"],
        "goal": {"wall_s": 120, "peak_rss_gib": 8},
    }
    result["meets_goal"] = result["wall_s"] <= 120 and result["peak_rss_gib"] <= 8
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
