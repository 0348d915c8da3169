"""Download an official MovieLens release from GroupLens and verify its MD5.

    python jobs/download_movielens.py ml-25m [--dest data/downloads] [--timeout 10]

Prints the path of the verified zip, which any job takes as --input. Without network
access it fails within the timeout with a clear message (exit code 3).
"""

import sys

import recsys  # noqa: F401
from recsys import cli
from recsys.data.download import BASE_URL, RELEASES, download_release, print_progress


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("release", choices=RELEASES, help="Release name.")
    p.add_argument("--dest", default="data/downloads", help="Directory for the zip (default: %(default)s).")
    p.add_argument("--base-url", default=BASE_URL, help="Mirror of the GroupLens datasets (default: %(default)s).")
    p.add_argument("--timeout", type=float, default=10.0, help="Seconds per network operation (default: %(default)s).")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        path = download_release(
            args.release, args.dest, base_url=args.base_url, timeout=args.timeout,
            progress=print_progress if sys.stderr.isatty() else None,
        )
        print(path)
        return 0

    return cli.run_main("download_movielens", body)


if __name__ == "__main__":
    sys.exit(main())
