"""Benchmark: preprocessing of the full-scale corpus, timed as cron runs it.

Runs ``spark-submit jobs/preprocess.py`` on the corpus and reports wall time and the peak
resident memory of the whole process tree (driver JVM + Python), sampled every 0.2 s.
Goal (DESIGN §7): <= 120 s wall, peak RSS <= 8 GiB on 2 cores.

    python benchmarks/bench_preprocess.py --input data/synthetic/ml-25m-synthetic
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from measure import REPO, job_env, machine, run_measured, spark_submit_cmd, write_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--artifact-root", default=None, help="default: a temporary directory")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--out", default=None, help="default: bench-results/preprocess.json")
    args = p.parse_args()

    root = args.artifact_root or tempfile.mkdtemp(prefix="bench-preprocess-")
    cmd = [*spark_submit_cmd(sys.executable, args.driver_memory),
           str(REPO / "jobs/preprocess.py"), "--input", args.input, "--artifact-root", root]
    measured = run_measured(cmd, job_env(sys.executable))
    if measured.returncode != 0:
        print(f"preprocess failed with exit code {measured.returncode}", file=sys.stderr)
        return measured.returncode

    sys.path.insert(0, str(REPO))
    from recsys import artifacts, io

    run_dir = artifacts.resolve(io.normalize_uri(root), "preprocess")
    manifest = artifacts.read_manifest(run_dir)
    result = {
        **machine(),
        "input": args.input,
        "ratings": manifest["counts"]["ratings"],
        "users": manifest["counts"]["users"],
        "movies": manifest["counts"]["movies"],
        "wall_s": measured.wall_s,
        "peak_rss_gib": measured.peak_rss_gib,
        "stage_timings_s": manifest["timings_s"],
        "goal": {"wall_s": 120, "peak_rss_gib": 8},
    }
    result["meets_goal"] = result["wall_s"] <= 120 and result["peak_rss_gib"] <= 8
    print(json.dumps(result, indent=2))
    write_result(result, args.out, "preprocess.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
