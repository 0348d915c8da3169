"""Helper of bench_score.py, run with spark-submit: Spark MLlib ALS on the preprocess run's
ratings, ``fit`` and ``recommendForAllUsers(N)`` timed separately. The recommend step is
timed as DESIGN §7 states its reference figure: the recommendations computed in full and
written as Parquet (``--sink parquet``, to a temporary directory removed afterwards), as
the scoring job writes its table; ``--sink noop`` computes them and discards them with
Spark's ``noop`` writer instead. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import recsys  # noqa: E402,F401
from recsys.config import SparkConfig  # noqa: E402
from recsys.evaluation.als import AlsSettings, fit_als, histories_uri, ratings_from_histories  # noqa: E402
from recsys.spark import build_session  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifact-root", required=True)
    p.add_argument("--top-n", type=int, default=100)
    p.add_argument("--rank", type=int, default=AlsSettings.rank)
    p.add_argument("--max-iter", type=int, default=AlsSettings.max_iter)
    p.add_argument("--reg-param", type=float, default=AlsSettings.reg_param)
    p.add_argument("--sink", choices=("parquet", "noop"), default="parquet",
                   help="where the recommendations go (default: Parquet, as DESIGN §7)")
    args = p.parse_args()
    spark = build_session("bench-score ALS", SparkConfig(hive_catalog=False, shuffle_partitions=8))
    try:
        ratings = ratings_from_histories(spark, histories_uri(args.artifact_root)).cache()
        n = ratings.count()
        start = time.perf_counter()
        model = fit_als(ratings, AlsSettings(rank=args.rank, max_iter=args.max_iter,
                                             reg_param=args.reg_param))
        model.userFactors.count()  # fitting is lazy in part: materialize the factors
        fit_s = time.perf_counter() - start
        out = tempfile.mkdtemp(prefix="bench-als-recs-")
        try:
            start = time.perf_counter()
            writer = model.recommendForAllUsers(args.top_n).write.mode("overwrite")
            if args.sink == "noop":
                writer.format("noop").save()
            else:
                writer.parquet(out)
            recommend_s = time.perf_counter() - start
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print("ALS_RESULT " + json.dumps({
            "ratings": n, "users": model.userFactors.count(), "movies": model.itemFactors.count(),
            "rank": args.rank, "max_iter": args.max_iter, "reg_param": args.reg_param,
            "fit_s": round(fit_s, 1), "recommend_s": round(recommend_s, 1),
            "recommend_sink": args.sink}), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
