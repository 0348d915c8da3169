"""Benchmark: the nightly scoring job on the full-scale corpus, against Spark MLlib ALS.

Times the whole ``spark-submit jobs/score_all_users.py`` (JVM start to published,
registered tables) on the full-scale synthetic corpus (162,541 users, 62,423 movies), and,
in the same run, ALS ``fit`` and ``recommendForAllUsers(100)`` on the same ratings
(benchmarks/als_all_users.py; the recommend step includes writing its Parquet output, as
DESIGN §7's reference figure does). Goals (DESIGN §7): score <= 60 s wall, >= 10x faster than
ALS's recommend step, index recall@100 >= 0.99.

Scoring runs as cron runs it, night after night against one metastore: an untimed first
night creates the metastore and the catalog tables, then ``--nights`` (3) nights on
consecutive dates are timed; their median is the figure held against the goals, and
every night's time is printed. The scoring driver JVM uses the JIT's quick tier only
(``--score-jit quick``, as the nightly's ``nightly.score_java_options``); ALS runs with the
JVM's default JIT, which suits its 20 minutes of JVM computation. Both spark-submits map a
JVM class-data sharing archive (``--class-archive auto``, the default; README "Faster JVM
start"), written once per root by the first night.

Scoring needs a trained model and its index. ``--artifact-root`` reuses a root that has
preprocess, train and index runs; without one, the corpus is preprocessed, trained (about
25 min, default configuration) and indexed first, untimed.

    python benchmarks/bench_score.py --input data/synthetic/ml-25m-synthetic \
        [--artifact-root /tmp/full-scale] [--skip-als]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from measure import REPO, has_run, job_env, machine, run_measured, spark_submit_cmd

FIRST_NIGHT = dt.date(2026, 1, 1)
#: The scoring driver's JIT (README "Faster JVM start"): "quick" is the nightly's
#: nightly.score_java_options, "default" the JVM's own.
SCORE_JIT = ("quick", "default")


def ensure_artifacts(root: str, source: str, driver_memory: str) -> None:
    env = job_env(sys.executable)
    steps = []
    if not has_run(root, "preprocess"):
        steps.append([*spark_submit_cmd(sys.executable, driver_memory),
                      str(REPO / "jobs/preprocess.py"), "--input", source])
    if not has_run(root, "train"):
        steps.append([sys.executable, str(REPO / "jobs/train.py")])
    if not has_run(root, "index"):
        steps.append([sys.executable, str(REPO / "jobs/build_index.py")])
    for cmd in steps:
        measured = run_measured([*cmd, "--artifact-root", root], env)
        if measured.returncode != 0:
            raise SystemExit(f"{cmd[-1]} failed with exit code {measured.returncode}")


def archive_path(root: str) -> str:
    from recsys import io

    return os.path.join(io.local_path(io.normalize_uri(root)), "_jvm", "spark-classes.jsa")


def score(root: str, driver_memory: str, *, run_date: str, metastore: str,
          archive: str | None, java_options: tuple[str, ...] = ()) -> dict:
    """One night of ``spark-submit jobs/score_all_users.py``, timed from launch to exit;
    with ``archive``, its driver JVM maps it, or writes it if it does not exist yet."""
    from recsys import artifacts, io

    writes_archive = archive is not None and not os.path.exists(archive)
    cmd = [*spark_submit_cmd(sys.executable, driver_memory, class_archive=archive,
                             java_options=java_options),
           str(REPO / "jobs/score_all_users.py"),
           "--artifact-root", root, "--run-date", run_date, "--set",
           f"spark.metastore_dir={metastore}"]
    measured = run_measured(cmd, job_env(sys.executable))
    if measured.returncode != 0:
        raise SystemExit(f"score_all_users failed with exit code {measured.returncode}")
    if writes_archive and not os.path.exists(archive):
        raise SystemExit("the scoring run did not write the class archive")
    manifest = artifacts.read_manifest(artifacts.resolve(io.normalize_uri(root), "score"))
    index = artifacts.read_manifest(manifest["inputs"]["index_dir"])
    return {"run_date": run_date, "command": shlex.join(cmd), "wall_s": measured.wall_s,
            "wrote_class_archive": writes_archive, "peak_rss_gib": measured.peak_rss_gib,
            "counts": manifest["counts"], "timings_s": manifest["timings_s"],
            "index_recall": index["recall"], "index_settings": index["settings"]}


def nights(root: str, driver_memory: str, *, count: int, archive: str | None,
           java_options: tuple[str, ...]) -> tuple[dict, list[dict]]:
    """The first night (untimed: it creates the metastore and the catalog tables, and
    writes the class archive when one is wanted and missing), then ``count`` timed nights
    on consecutive dates against that metastore, as cron runs the job night after night."""
    metastore = tempfile.mkdtemp(prefix="bench-score-metastore-")
    first = score(root, driver_memory, run_date=FIRST_NIGHT.isoformat(), metastore=metastore,
                  archive=archive, java_options=java_options)
    timed = [score(root, driver_memory,
                   run_date=(FIRST_NIGHT + dt.timedelta(days=i + 1)).isoformat(),
                   metastore=metastore, archive=archive, java_options=java_options)
             for i in range(count)]
    return first, timed


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
                        "(<root>/_jvm/, written by the untimed first night if absent), as "
                        "README 'Faster JVM start' deploys the nightly; off: plain JVM start")
    p.add_argument("--score-jit", choices=SCORE_JIT, default="quick",
                   help="the scoring driver's JIT: quick (C1 only, the nightly's "
                        "nightly.score_java_options) or the JVM's default; ALS always runs "
                        "with the default")
    p.add_argument("--nights", type=int, default=3,
                   help="timed scoring nights after the untimed first one (default 3); the "
                        "median is the figure against the goals")
    args = p.parse_args()
    if args.nights < 1:
        p.error("--nights must be at least 1")
    sys.path.insert(0, str(REPO))
    root = args.artifact_root or tempfile.mkdtemp(prefix="bench-score-")
    ensure_artifacts(root, args.input, args.driver_memory)
    from recsys.config import NightlyConfig

    archive = archive_path(root) if args.class_archive == "auto" else None
    java_options = (tuple(shlex.split(NightlyConfig().score_java_options))
                    if args.score_jit == "quick" else ())
    first, timed = nights(root, args.driver_memory, count=args.nights, archive=archive,
                          java_options=java_options)
    walls = [n["wall_s"] for n in timed]
    median = statistics.median(walls)
    result = {**machine(), "artifact_root": root, "command": timed[-1]["command"],
              "class_archive": archive, "score_jit": args.score_jit,
              "first_night": {k: first[k] for k in ("run_date", "wall_s",
                                                    "wrote_class_archive")},
              "nights": timed, "score_wall_s": walls, "score_wall_median_s": median}
    recall = next(iter(v for k, v in timed[-1]["index_recall"].items()
                       if k.startswith("recall@")))
    goals = {"score_wall_s (median) <= 60": median <= 60,
             "index recall@100 >= 0.99": recall >= 0.99}
    if not args.skip_als:
        result["als"] = als(root, args.als_driver_memory, args.als_max_iter, args.als_sink,
                            archive)
        speedup = result["als"]["recommend_s"] / median
        result["speedup_vs_als_recommend"] = round(speedup, 1)
        result["speedup_by_night"] = [round(result["als"]["recommend_s"] / w, 1)
                                      for w in walls]
        goals[">= 10x faster than ALS recommendForAllUsers (median night)"] = speedup >= 10
    result["goals_met"] = goals
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
