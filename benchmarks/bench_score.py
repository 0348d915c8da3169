"""Benchmark: the nightly scoring job on the full-scale corpus, against Spark MLlib ALS.

Times the whole ``spark-submit jobs/score_all_users.py`` (JVM start to published,
registered tables) on the full-scale synthetic corpus (162,541 users, 62,423 movies), and,
in the same run, ALS ``fit`` and ``recommendForAllUsers(100)`` on the same ratings
(benchmarks/als_all_users.py; the recommend step includes writing its Parquet output, as
DESIGN §7's reference figure does). Goals (DESIGN §7): score <= 60 s wall, >= 10x faster than
ALS's recommend step, index recall@100 >= 0.99.

Both spark-submits map a JVM class-data sharing archive (``--class-archive auto``, the
default; README "Faster JVM start"), written once per root by an untimed scoring run.

Scoring needs a trained model and its index. ``--artifact-root`` reuses a root that has
preprocess, train and index runs; without one, the corpus is preprocessed, trained (about
25 min, default configuration) and indexed first, untimed.

    python benchmarks/bench_score.py --input data/synthetic/ml-25m-synthetic \
        [--artifact-root /tmp/full-scale] [--skip-als]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from measure import REPO, job_env, machine, run_measured, spark_submit_cmd

RUN_DATE = "2026-01-01"
ARCHIVE_RUN_DATE = "2025-12-31"


def ensure_artifacts(root: str, source: str, driver_memory: str) -> None:
    from recsys import artifacts, io

    def have(stage: str) -> bool:
        return io.exists(io.join(io.normalize_uri(root), stage, artifacts.LATEST))

    env = job_env(sys.executable)
    steps = []
    if not have("preprocess"):
        steps.append([*spark_submit_cmd(sys.executable, driver_memory),
                      str(REPO / "jobs/preprocess.py"), "--input", source])
    if not have("train"):
        steps.append([sys.executable, str(REPO / "jobs/train.py")])
    if not have("index"):
        steps.append([sys.executable, str(REPO / "jobs/build_index.py")])
    for cmd in steps:
        measured = run_measured([*cmd, "--artifact-root", root], env)
        if measured.returncode != 0:
            raise SystemExit(f"{cmd[-1]} failed with exit code {measured.returncode}")


def class_archive(root: str, driver_memory: str) -> str:
    """The driver JVM's class-data sharing archive for this root's scoring job: written
    by one untimed run of that job (another night, its own metastore) unless it exists."""
    from recsys import io

    path = os.path.join(io.local_path(io.normalize_uri(root)), "_jvm", "spark-classes.jsa")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cmd = [*spark_submit_cmd(sys.executable, driver_memory, class_archive=path,
                                 dump_archive=True),
               str(REPO / "jobs/score_all_users.py"), "--artifact-root", root,
               "--run-date", ARCHIVE_RUN_DATE, "--set",
               f"spark.metastore_dir={tempfile.mkdtemp(prefix='bench-score-metastore-')}"]
        measured = run_measured(cmd, job_env(sys.executable))
        if measured.returncode != 0 or not os.path.exists(path):
            raise SystemExit(f"writing the class archive failed (exit code "
                             f"{measured.returncode})")
    return path


def score(root: str, driver_memory: str, archive: str | None) -> dict:
    from recsys import artifacts, io

    meta = tempfile.mkdtemp(prefix="bench-score-metastore-")
    cmd = [*spark_submit_cmd(sys.executable, driver_memory, class_archive=archive),
           str(REPO / "jobs/score_all_users.py"),
           "--artifact-root", root, "--run-date", RUN_DATE, "--set",
           f"spark.metastore_dir={meta}"]
    measured = run_measured(cmd, job_env(sys.executable))
    if measured.returncode != 0:
        raise SystemExit(f"score_all_users failed with exit code {measured.returncode}")
    manifest = artifacts.read_manifest(artifacts.resolve(io.normalize_uri(root), "score"))
    index = artifacts.read_manifest(manifest["inputs"]["index_dir"])
    return {"wall_s": measured.wall_s, "peak_rss_gib": measured.peak_rss_gib,
            "counts": manifest["counts"], "timings_s": manifest["timings_s"],
            "index_recall": index["recall"], "index_settings": index["settings"]}


def als(root: str, driver_memory: str, max_iter: int, sink: str, archive: str | None) -> dict:
    cmd = [*spark_submit_cmd(sys.executable, driver_memory, class_archive=archive),
           str(REPO / "benchmarks/als_all_users.py"),
           "--artifact-root", root, "--max-iter", str(max_iter), "--sink", sink]
    print("running:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, env=job_env(sys.executable), capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("ALS_RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"ALS failed with exit code {done.returncode}")
    return json.loads(lines[-1].split(" ", 1)[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=str(REPO / "data/synthetic/ml-25m-synthetic"))
    p.add_argument("--artifact-root", help="reuse (or fill) this root; default: a new one")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--als-driver-memory", default="12g")
    p.add_argument("--als-max-iter", type=int, default=10)
    p.add_argument("--als-sink", choices=("parquet", "noop"), default="parquet",
                   help="ALS recommendations written as Parquet (DESIGN §7's reference) or "
                        "discarded (noop)")
    p.add_argument("--skip-als", action="store_true", help="time scoring only")
    p.add_argument("--class-archive", choices=("auto", "off"), default="auto",
                   help="auto: both timed spark-submits map a JVM class-data sharing archive "
                        "(<root>/_jvm/, written by one untimed scoring run if absent), as "
                        "README 'Faster JVM start' deploys the nightly; off: plain JVM start")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    root = args.artifact_root or tempfile.mkdtemp(prefix="bench-score-")
    ensure_artifacts(root, args.input, args.driver_memory)
    archive = class_archive(root, args.driver_memory) if args.class_archive == "auto" else None
    result = {**machine(), "artifact_root": root,
              "command": "spark-submit --master local[2] --driver-memory "
                         f"{args.driver_memory} "
                         + (f"--driver-java-options -XX:SharedArchiveFile={archive} "
                            if archive else "") + "jobs/score_all_users.py",
              "class_archive": archive,
              "score": score(root, args.driver_memory, archive)}
    recall = next(iter(v for k, v in result["score"]["index_recall"].items()
                       if k.startswith("recall@")))
    goals = {"score_wall_s <= 60": result["score"]["wall_s"] <= 60,
             "index recall@100 >= 0.99": recall >= 0.99}
    if not args.skip_als:
        result["als"] = als(root, args.als_driver_memory, args.als_max_iter, args.als_sink,
                            archive)
        speedup = result["als"]["recommend_s"] / result["score"]["wall_s"]
        result["speedup_vs_als_recommend"] = round(speedup, 1)
        goals[">= 10x faster than ALS recommendForAllUsers"] = speedup >= 10
    result["goals_met"] = goals
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
