"""Stage 1 (DESIGN §4.1): a MovieLens release -> versioned preprocessing artifacts.

Outputs under ``<artifact_root>/preprocess/<run_id>/``:

=================  ==========================================================
histories/         user_id, movie_ids, ratings, timestamps (by time), num_ratings, mean_rating
movies/            the movie table (recsys.features.movies.build_movie_table)
vocab/movies/      movie_id, index, num_ratings (most rated first)
vocab/users/       user_id, index, num_ratings
vocab/genres/      genre, index, num_movies
splits/            user_id, role, holdout_movie_ids, last_movie_id, last_timestamp
rejects/           source, reason, record: every quarantined input row
stats.json         corpus statistics
manifest.json      config, input sizes and MD5s, counts (incl. rejects by reason),
                   timings, library versions, output checksums
=================  ==========================================================

The ratings are shuffled once (by user); duplicate detection and history building both
reuse that partitioning.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys import artifacts, io
from recsys.config import Config
from recsys.data.errors import InputFileError, RejectThresholdError, ShrunkInputError
from recsys.data.readers import read_raw
from recsys.data.release import Release, check_input, open_release
from recsys.data.validation import (
    mark_duplicate_movies,
    mark_unknown_movies,
    rejects_of,
    tag_rows,
    valid_of,
)
from recsys.features.histories import (
    build_user_tables,
    histories_of,
    movie_sums_of,
    splits_of,
)
from recsys.features.movies import (
    build_movie_table,
    genome_vectors,
    genre_vocabulary,
    movie_vocabulary,
    rating_stats,
    top_tags,
    user_vocabulary,
)
from recsys.spark import local_dirs

log = logging.getLogger(__name__)
STAGE = "preprocess"
LATEST_TIMESTAMP_SLACK_S = 86_400


@dataclass(frozen=True)
class PreprocessResult:
    run_dir: str
    manifest: dict[str, Any]


def _reason_counts(tagged: DataFrame) -> dict[str, int]:
    rows = tagged.groupBy("reason").count().collect()
    return {(r["reason"] or "valid"): int(r["count"]) for r in rows}


def _rejects_rows(built: DataFrame, source: str) -> DataFrame:
    """Quarantined rows carried by a grouped table's reject rows (key column null)."""
    key = built.columns[0]
    rows = built.where(F.col(key).isNull()).select(
        F.explode(F.arrays_zip(
            F.col("reject_reasons").alias("reason"), F.col("reject_records").alias("record")
        )).alias("x")
    )
    return rows.select(F.lit(source).alias("source"), "x.reason", "x.record")


def _grouped_counts(rejects: DataFrame, built: DataFrame, rows_column: str) -> dict[str, int]:
    """Rows by reason for a table grouped in one pass: the rejects it carries, and its
    valid rows summed from ``rows_column`` (under "valid", when there are any)."""
    counts = {r["reason"]: int(r["count"]) for r in rejects.groupBy("reason").count().collect()}
    valid = built.agg(F.sum(rows_column)).first()[0] or 0
    if valid:
        counts["valid"] = int(valid)
    return counts


def _record_counts(manifest: artifacts.Manifest, counts: dict[str, dict[str, int]]) -> None:
    manifest["counts"]["rows_by_reason"] = counts
    manifest["counts"]["rejected"] = {
        s: sum(v for k, v in c.items() if k != "valid") for s, c in counts.items()
    }


def _write(df: DataFrame, uri: str, files: int | None = None) -> None:
    if files is not None:
        df = df.coalesce(files)
    df.write.mode("overwrite").parquet(uri)


def _check_threshold(
    counts: dict[str, dict[str, int]], release: Release, max_fraction: float, rejects_uri: str,
    encoding: str,
) -> None:
    problems = []
    for table, by_reason in counts.items():
        source = release.layout.table(table).filename
        total = sum(by_reason.values())
        rejected = total - by_reason.get("valid", 0)
        if total and rejected / total > max_fraction:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items()) if k != "valid")
            problems.append(
                f"{source}: {rejected} of {total} rows rejected "
                f"({rejected / total:.4%} > {max_fraction:.4%}; {detail})"
            )
    if problems:
        if any(c.get("bad_encoding") for c in counts.values()):
            problems.append(f"bad_encoding: text that is not valid {encoding}; if the release "
                            "is in another encoding, set data.encoding (e.g. ISO-8859-1)")
        raise RejectThresholdError(
            "too many bad input rows: " + "; ".join(problems)
            + f". The rejected rows with their reasons are in {rejects_uri}; raise "
            "data.max_reject_fraction to accept them."
        )


def check_shrink(root: str, counts: dict[str, Any], max_shrink: float, source: str) -> None:
    """Raise :class:`ShrunkInputError` when tonight's users or ratings fall more than
    ``max_shrink`` below those of the latest preprocess run under ``root`` (none yet, or
    ``max_shrink`` 1: no check). Ratings accumulate: a release with far fewer is most
    likely cut short (a partial download, a failed export), and its night would publish
    no recommendations for the users it lost."""
    if max_shrink >= 1:
        return
    try:
        latest = artifacts.read_manifest(artifacts.resolve(root, STAGE))
    except (artifacts.ArtifactError, OSError, ValueError):
        return  # a first run, or none that can be read: nothing to compare with
    shrunk = [f"{counts[k]:,} {k} against {before:,} ({1 - counts[k] / before:.1%} fewer)"
              for k in ("users", "ratings")
              if isinstance(before := latest.get("counts", {}).get(k), int) and before > 0
              and counts[k] < (1 - max_shrink) * before]
    if shrunk:
        raise ShrunkInputError(
            f"{source} has {' and '.join(shrunk)} in the latest preprocess run "
            f"{latest.get('run_id')} (from {latest.get('inputs', {}).get('source')}): more "
            f"than preprocess.max_shrink = {max_shrink:g} below it, so the release looks "
            "cut short (a partial download or export). This run is kept as failed and the "
            "latest run stays the one the next stages read; if the release is right, run "
            "with --set preprocess.max_shrink=1 once")


def check_inputs(config: Config) -> None:
    """What the job checks before its SparkSession starts (seconds): the release is there
    and can be read (:func:`recsys.data.release.check_input`), and the stage's directory
    can be written."""
    check_input(config.data.input)
    artifacts.check_writable(io.normalize_uri(config.artifact_root), STAGE)


def run_preprocess(spark: SparkSession, config: Config, *, run_id: str | None = None) -> PreprocessResult:
    """Validate the configured release and write the preprocessing artifacts."""
    root = io.normalize_uri(config.artifact_root)
    run_id, run_dir = artifacts.claim_run(root, STAGE, run_id)
    manifest = artifacts.Manifest(STAGE, run_id, config)
    out = lambda name: io.join(run_dir, name)  # noqa: E731
    with artifacts.failure_recorded(run_dir, manifest, only_if_started=True,
                                    spark_scratch=local_dirs(spark)):
        return _preprocess(spark, config, root, run_dir, manifest, out)


def _preprocess(spark, config, root, run_dir, manifest, out) -> PreprocessResult:  # noqa: ANN001
    with manifest.timed("open_release"):
        release = open_release(config.data.input, work_uri=root, layout=config.data.layout)
    encoding = release.layout.encoding if config.data.encoding == "auto" else config.data.encoding
    # A rating cannot be from after this run (a day's slack for clocks): later
    # timestamps are corrupt, e.g. written in milliseconds.
    latest = int(time.time()) + LATEST_TIMESTAMP_SLACK_S
    manifest["inputs"] = {"source": release.source, "layout": release.layout.name,
                          "encoding": encoding, "latest_timestamp": latest}
    log.info("preprocess %s: %s release at %s", manifest["run_id"], release.layout.name,
             release.directory)

    def tagged(table: str) -> DataFrame | None:
        uri = release.file(table)
        if uri is None:
            return None
        df = tag_rows(read_raw(spark, uri, spec(table), encoding), spec(table),
                      latest_timestamp=latest)
        return mark_unknown_movies(df, movies) if "movie_id" in df.columns and table != "movies" else df

    spec = release.layout.table
    partitions = config.preprocess.history_files
    cached: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        return cached[-1]

    with ThreadPoolExecutor(max_workers=1) as pool:
        checksums = pool.submit(release.checksums)  # overlaps with the Spark work

        with manifest.timed("validate_movies"):
            movies_tagged = keep(mark_duplicate_movies(tagged("movies")))
            movies = valid_of(movies_tagged)
            counts = {"movies": _reason_counts(movies_tagged)}

        with manifest.timed("ratings_to_histories"):
            # The one pass over the ratings: validation, the shuffle by user, histories,
            # duplicates and the split assignment (recsys.features.histories).
            built = keep(build_user_tables(
                tagged("ratings"), partitions, config.split, sep=spec("ratings").sep
            ))
            ratings_rejects = _rejects_rows(built, spec("ratings").filename)
            counts["ratings"] = _grouped_counts(ratings_rejects, built, "num_ratings")
            for table in ("ratings", "movies"):
                if not counts[table]:
                    raise InputFileError(
                        f"{spec(table).filename} has no data rows in {release.directory}"
                    )

        with manifest.timed("validate_other_files"):
            others: dict[str, DataFrame] = {}
            for table in ("tags", "links", "genome_tags"):
                df = tagged(table)
                if df is not None:
                    others[table] = keep(df)
                    counts[table] = _reason_counts(others[table])
            genome = None
            scores = tagged("genome_scores")
            if scores is not None:
                # one pass: vectors, row counts and rejects (recsys.features.movies)
                num_tags = counts.get("genome_tags", {}).get("valid", 0)
                genome = keep(genome_vectors(scores, num_tags, partitions))
                genome_rejects = _rejects_rows(genome, spec("genome_scores").filename)
                counts["genome_scores"] = _grouped_counts(genome_rejects, genome, "num_rows")
                if "genome_tags" not in others:
                    genome = None  # scores without their tag list: no vectors

        with manifest.timed("write_rejects"):
            rejects = ratings_rejects.unionByName(rejects_of(movies_tagged, spec("movies")))
            if scores is not None:
                rejects = rejects.unionByName(genome_rejects)
            for table, df in others.items():
                if sum(v for k, v in counts[table].items() if k != "valid"):
                    rejects = rejects.unionByName(rejects_of(df, spec(table)))
            _write(rejects, out("rejects"), files=1)
        manifest["inputs"]["files"] = checksums.result()
        _record_counts(manifest, counts)
        _check_threshold(counts, release, config.data.max_reject_fraction, out("rejects"),
                         encoding)

    with manifest.timed("write_histories"):
        _write(histories_of(built), out("histories"))
        _write(splits_of(built), out("splits"), files=1)
    histories = spark.read.parquet(out("histories"))

    with manifest.timed("write_movies"):
        sums = movie_sums_of(built)
        table = build_movie_table(
            movies,
            rating_stats(sums),
            tags=top_tags(valid_of(others["tags"]), config.preprocess.max_tags_per_movie)
            if "tags" in others else None,
            genome=genome,
            links=valid_of(others["links"]) if "links" in others else None,
        )
        _write(table, out("movies"), files=1)
    movie_table = spark.read.parquet(out("movies"))

    with manifest.timed("write_vocab"):
        _write(movie_vocabulary(movie_table), out("vocab/movies"), files=1)
        _write(user_vocabulary(histories), out("vocab/users"), files=1)
        _write(genre_vocabulary(movie_table), out("vocab/genres"), files=1)

    with manifest.timed("stats"):
        stats = corpus_stats(spark, out)
        io.write_text(out("stats.json"), json.dumps(stats, indent=2) + "\n")
    manifest["counts"].update(
        users=stats["users"], ratings=stats["ratings"], movies=stats["movies"],
        rated_movies=stats["rated_movies"],
    )
    for df in cached:
        df.unpersist()
    check_shrink(root, manifest["counts"], config.preprocess.max_shrink,
                 manifest["inputs"]["source"])
    artifacts.commit(root, STAGE, run_dir, manifest, config)
    log.info("preprocess %s done: %s", manifest["run_id"], run_dir)
    return PreprocessResult(run_dir=run_dir, manifest=manifest.data)


def corpus_stats(spark: SparkSession, out) -> dict[str, Any]:  # noqa: ANN001
    histories = spark.read.parquet(out("histories"))
    movies = spark.read.parquet(out("movies"))
    splits = spark.read.parquet(out("splits"))
    h = histories.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum("num_ratings").alias("ratings"),
        F.min("num_ratings").alias("min_user_ratings"),
        F.percentile_approx("num_ratings", [0.5, 0.9, 0.99]).alias("q"),
        F.max("num_ratings").alias("max_user_ratings"),
        F.min(F.element_at("timestamps", 1)).alias("first_timestamp"),
        F.max(F.element_at("timestamps", -1)).alias("last_timestamp"),
    ).first()
    m = movies.agg(
        F.count(F.lit(1)).alias("movies"),
        F.sum((F.col("num_ratings") > 0).cast("int")).alias("rated_movies"),
        F.max("num_ratings").alias("max_movie_ratings"),
        F.sum(F.col("genome").isNotNull().cast("int")).alias("movies_with_genome"),
    ).first()
    rating_mix = {
        str(r["rating"]): int(r["count"])
        for r in histories.select(F.explode("ratings").alias("rating"))
        .groupBy("rating").count().orderBy("rating").collect()
    }
    roles = {r["role"]: int(r["count"]) for r in splits.groupBy("role").count().collect()}
    return {
        "users": int(h["users"]),
        "ratings": int(h["ratings"] or 0),
        "movies": int(m["movies"]),
        "rated_movies": int(m["rated_movies"] or 0),
        "movies_with_genome": int(m["movies_with_genome"] or 0),
        "ratings_per_user": {
            "min": h["min_user_ratings"], "median": h["q"][0] if h["q"] else None,
            "p90": h["q"][1] if h["q"] else None, "p99": h["q"][2] if h["q"] else None,
            "max": h["max_user_ratings"],
        },
        "max_ratings_per_movie": m["max_movie_ratings"],
        "timestamp_range": [h["first_timestamp"], h["last_timestamp"]],
        "rating_mix": rating_mix,
        "split_roles": roles,
    }
