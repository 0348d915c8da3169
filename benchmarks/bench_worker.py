"""Benchmark: one scoring worker's Python work, outside Spark, phase by phase.

What a Spark Python worker of ``score_all_users`` does for its users, run in this process
on one core: load the user tower and both searchers (:func:`load_scoring_artifacts`),
then for each batch of ``--batch-size`` users of the preprocess run's histories:
``score_batch`` (``recommend``: user tower, ScaNN / exact search, rated movies removed;
then the two tables' Arrow batches) and the Parquet writes, as the UDF of
:mod:`recsys.scoring.score` does. Prints
the time of each phase, best of ``--repeat`` passes, and users per second.

    python benchmarks/bench_worker.py --artifact-root <root with preprocess, train, index>
        [--users 16384] [--batch-size 4096] [--repeat 3] [--code <other checkout>]

``--code`` imports ``recsys`` from another checkout that has ``score_batch`` (an A/B
against an earlier commit on the same artifacts and the same users).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact-root", required=True)
    p.add_argument("--users", type=int, default=16_384, help="users scored (the first ones)")
    p.add_argument("--batch-size", type=int, default=4096,
                   help="users per batch (score.batch_size)")
    p.add_argument("--top-n", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3, help="passes; the best is reported")
    p.add_argument("--code", default=str(REPO), help="checkout to import recsys from")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as one Spark task has
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, args.code)

    import pyarrow.parquet as pq

    import recsys  # noqa: F401
    from recsys import artifacts, io
    from recsys.config import ScoreConfig
    from recsys.scoring import recommend as rec
    from recsys.scoring import score as sc

    root = io.normalize_uri(args.artifact_root)
    try:
        pre_dir = artifacts.resolve(root, "preprocess", None)
        train_dir, index_dir, model_version = sc.check_artifacts(root, train_run=None,
                                                                 index_run=None)
    except artifacts.ArtifactError as exc:
        raise SystemExit(f"bench_worker: {exc} (make bench-score builds such a root)") from None
    histories = pq.read_table(io.local_path(io.join(pre_dir, "histories")),
                              columns=["user_id", "movie_ids", "ratings"])
    histories = histories.slice(0, args.users).combine_chunks()
    batches = histories.to_batches(max_chunksize=args.batch_size)

    start = time.perf_counter()
    tower, scann, exact = rec.load_scoring_artifacts(train_dir, index_dir)
    load_s = time.perf_counter() - start

    phases: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] += time.perf_counter() - t0
        return wrapper

    # phase timers around score_batch's parts (module attributes, looked up per call)
    rec.recommend = timed("recommend", rec.recommend)
    rec.embed_histories = timed("user tower", rec.embed_histories)
    rec.drop_seen = timed("remove rated", rec.drop_seen)
    for searcher in (scann, exact):
        searcher.search = timed(f"search ({searcher.kind})", searcher.search)

    max_scann_depth = ScoreConfig().max_scann_depth
    best: dict[str, float] | None = None
    for _ in range(args.repeat):
        phases.clear()
        with tempfile.TemporaryDirectory(prefix="bench-worker-") as out:
            t_all = time.perf_counter()
            with sc.PartWriter(out, sc.RECOMMENDATIONS, "recs.parquet") as recs_out, \
                    sc.PartWriter(out, sc.USER_EMBEDDINGS, "emb.parquet") as emb_out:
                for batch in batches:
                    recs, emb = sc.score_batch(batch, tower, scann, exact, top_n=args.top_n,
                                               max_scann_depth=max_scann_depth,
                                               model_version=model_version, run_id="bench")
                    t0 = time.perf_counter()
                    recs_out.write(recs)
                    emb_out.write(emb)
                    phases["parquet write"] += time.perf_counter() - t0
                recs_out.close()
                emb_out.close()
            phases["total"] = time.perf_counter() - t_all
        if best is None or phases["total"] < best["total"]:
            best = dict(phases)
    assert best is not None
    users = histories.num_rows
    print(json.dumps({
        "code": args.code, "users": users, "batch_size": args.batch_size,
        "load_s": round(load_s, 3),
        "phases_s": {k: round(v, 3) for k, v in best.items()},
        "users_per_s": round(users / best["total"]),
        "full_scale_one_core_s": round(162_541 / (users / best["total"]), 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
