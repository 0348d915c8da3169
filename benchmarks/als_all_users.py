"""Helper of bench_score.py, run with spark-submit: Spark MLlib ALS on the preprocess run's
ratings, ``fit`` and ``recommendForAllUsers(N)`` timed separately (the recommendations are
computed in full and discarded with Spark's ``noop`` writer). Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
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
        start = time.perf_counter()
        model.recommendForAllUsers(args.top_n).write.format("noop").mode("overwrite").save()
        recommend_s = time.perf_counter() - start
        print("ALS_RESULT " + json.dumps({
            "ratings": n, "users": model.userFactors.count(), "movies": model.itemFactors.count(),
            "rank": args.rank, "max_iter": args.max_iter, "reg_param": args.reg_param,
            "fit_s": round(fit_s, 1), "recommend_s": round(recommend_s, 1)}), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
