"""Remove old runs from the artifact root, keeping every run still in use.

    python jobs/prune_artifacts.py [--conf-file conf/prod.toml] [--artifact-root URI]
                                   [--keep N] [--dry-run] [--set nightly.log_dir=...]

What the nightly does after every night that succeeds (nightly.keep_runs), by hand: keeps
the N newest completed runs of each stage, every run the LATEST runs were made from,
recent incomplete runs, the N newest nightly summaries and log files (nightly.log_dir;
of this root's nights: the logs of another root's nightlies there are left to it);
it removes what failed scoring runs left in the tables' _staging/ a day on, and never
touches a published night (see recsys.retention). --dry-run lists what would go.
Exit codes: 0 ok, 2 configuration, 4 some could not be removed (each named with the
filesystem's reason, e.g. another user's run; the others were removed), 1 other.
"""

import sys

from recsys import cli, io
from recsys.config import ConfigError, add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    add_config_arguments(p)
    p.add_argument("--keep", type=int, default=None,
                   help="Newest completed runs of each stage to keep (default: "
                        "nightly.keep_runs).")
    p.add_argument("--dry-run", action="store_true", help="List what would be removed.")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from recsys.retention import prune

        config = config_from_args(args)
        keep = config.nightly.keep_runs if args.keep is None else args.keep
        if keep < 1:
            raise ConfigError(f"--keep must be >= 1, got {keep} (nightly.keep_runs = 0 "
                              "means keep everything: give --keep N to prune by hand)")
        if not io.is_dir(io.normalize_uri(config.artifact_root)):
            raise ConfigError(f"artifact root {config.artifact_root} does not exist: nothing "
                              "to prune there (check --artifact-root or artifact_root); the "
                              "log directory was not touched either")
        pruned = prune(config.artifact_root, keep, log_dir=config.nightly.log_dir,
                       table_root=config.score.table_root, dry_run=args.dry_run)
        for uri in pruned.removed:
            print(f"prune_artifacts: {'would remove' if args.dry_run else 'removed'} {uri}")
        for failed in pruned.failed:
            print(f"prune_artifacts: could not remove {failed}", file=sys.stderr)
        print(f"prune_artifacts: {'would remove' if args.dry_run else 'removed'} "
              f"{pruned.describe()}")
        return cli.EXIT_ARTIFACT if pruned.failed else 0

    return cli.run_main("prune_artifacts", body)


if __name__ == "__main__":
    sys.exit(main())
