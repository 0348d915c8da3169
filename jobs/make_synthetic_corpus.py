"""Write a synthetic MovieLens corpus in the ml-25m file layout (full ml-25m scale by default).

    python jobs/make_synthetic_corpus.py --out data/synthetic/ml-25m-synthetic
        [--users 162541] [--movies 62423] [--ratings 25000095] [--seed 0]

Deterministic per seed. The output directory is a release any job reads with --input.
"""

import json
import sys
import time

import recsys  # noqa: F401
from recsys import cli
from recsys.data.synthetic import FULL_MOVIES, FULL_RATINGS, FULL_USERS, SyntheticSpec, generate


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="Output directory (created).")
    p.add_argument("--users", type=int, default=FULL_USERS,
                   help="Users, each with >= 20 ratings (default: %(default)s, as ml-25m).")
    p.add_argument("--movies", type=int, default=FULL_MOVIES,
                   help="Movies, at least 40 (default: %(default)s, as ml-25m).")
    p.add_argument("--ratings", type=int, default=FULL_RATINGS,
                   help="Ratings in all (default: %(default)s, as ml-25m).")
    p.add_argument("--seed", type=int, default=0,
                   help="0 .. 2**32 - 1; the same seed gives the same files (default: 0).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        spec = SyntheticSpec(users=args.users, movies=args.movies, ratings=args.ratings, seed=args.seed)
        try:
            spec.resolved().validate()
        except ValueError as exc:
            print(f"make_synthetic_corpus: {exc}", file=sys.stderr)
            return cli.EXIT_CONFIG
        start = time.perf_counter()
        counts = generate(spec, args.out)
        counts["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(counts))
        return 0

    return cli.run_main("make_synthetic_corpus", body)


if __name__ == "__main__":
    sys.exit(main())
