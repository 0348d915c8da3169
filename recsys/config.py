"""Typed configuration: frozen dataclasses loaded from ``conf/*.toml``.

Precedence, lowest first: the dataclass defaults, the TOML file (``--conf-file``), then
``--set section.key=value`` overrides on the command line. Unknown sections or keys and
values of the wrong type are errors that name the offending key, so a typo in a cron
config fails the run instead of being ignored. So are values out of their range (a
non-positive batch size, an empty ALS grid, a fraction above 1, an unknown objective):
each section checks its own keys when it is built, and :class:`Config` the keys that
depend on each other, so a bad value stops a job before it reads any data (exit code 2)
instead of failing deep inside Spark or TensorFlow, or an hour into the nightly.

The resolved configuration is written next to every artifact (``config.toml``) with
:func:`dump_toml`.
"""

from __future__ import annotations

import argparse
import codecs
import datetime as dt
import dataclasses
import logging
import math
import re
import shlex
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (setup.py installs it)
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def time_zone(name: str, key: str = "time zone") -> dt.tzinfo | None:
    """The zone a configuration names: "UTC", "local" (None: the machine's own, as
    ``datetime.astimezone`` takes it) or an IANA name; ConfigError naming ``key`` else."""
    if name == "UTC":
        return dt.timezone.utc
    if name == "local":
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{key} must be 'UTC', 'local' or an IANA time zone name such as "
                          f"'Europe/Berlin', got {name!r}") from None


class _Check:
    """Range checks of one section's values; each failure names ``section.key``."""

    def __init__(self, section: str, values: Any) -> None:
        self.section, self.values = section, values

    def fail(self, key: str, rule: str) -> None:
        raise ConfigError(f"{self.section}.{key} must be {rule}, got "
                          f"{getattr(self.values, key)!r}")

    def at_least(self, minimum: float, *keys: str) -> "_Check":
        for key in keys:
            value = getattr(self.values, key)
            items = value if isinstance(value, tuple) else (value,)
            if not all(v >= minimum for v in items):  # also refuses NaN
                self.fail(key, f">= {minimum}" + (" (every item)" if items is value else ""))
        return self

    def positive(self, *keys: str) -> "_Check":
        for key in keys:
            value = getattr(self.values, key)
            if not (value > 0 and math.isfinite(value)):
                self.fail(key, "a finite number > 0")
        return self

    def within(self, key: str, low: float, high: float, *, open_low: bool = False,
               open_high: bool = False) -> "_Check":
        value = getattr(self.values, key)
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        if not (above and below):
            self.fail(key, f"in {'(' if open_low else '['}{low:g}, {high:g}"
                            f"{')' if open_high else ']'}")
        return self

    def one_of(self, key: str, choices: Sequence[str], *, fold_case: bool = False) -> "_Check":
        value = getattr(self.values, key)
        if (value.upper() if fold_case else value) not in choices:
            self.fail(key, f"one of {', '.join(repr(c) for c in choices)}")
        return self

    def not_empty(self, *keys: str) -> "_Check":
        for key in keys:
            if not getattr(self.values, key):
                self.fail(key, "a non-empty list")
        return self

    def matches(self, key: str, pattern: str, rule: str, *, fold_case: bool = False) -> "_Check":
        if not re.fullmatch(pattern, getattr(self.values, key),
                            flags=re.IGNORECASE if fold_case else 0):
            self.fail(key, rule)
        return self

    def identifier(self, *keys: str) -> "_Check":
        for key in keys:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", getattr(self.values, key)):
                self.fail(key, "a SQL identifier (letters, digits and _, not starting "
                                "with a digit)")
        return self


#: What ``train.objective`` may be (README "The model", training objectives).
OBJECTIVES = ("next_item", "held_out_set")
#: What ``model.kind`` may be.
MODEL_KINDS = ("history", "mf")
#: Validation metrics ``train.select_metric`` may name (computed after every epoch).
SELECT_METRICS = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@100")
#: Spark's byte sizes (JavaUtils.byteStringAs: no fractions) and master URLs; a master
#: with another scheme (an external cluster manager's) is left to Spark.
_BYTES = r"0*[1-9][0-9]*([kmgtp]b?|b)?"
_MASTER = (r"local(\[([1-9][0-9]*|\*)(,\s*[1-9][0-9]*)?\])?"
           r"|local-cluster\[[1-9][0-9]*,\s*[1-9][0-9]*,\s*[1-9][0-9]*\]"
           r"|yarn|[a-z][a-z0-9+.-]*://\S+")
#: Spark's log levels (``spark.log_level``, any case).
SPARK_LOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")


@dataclass(frozen=True)
class DataConfig:
    #: MovieLens release directory or .zip (any layout of DESIGN §3), local path or URI.
    input: str = "data/ml-latest-small"
    #: "auto" or one of recsys.data.layouts.LAYOUTS.
    layout: str = "auto"
    #: "auto" picks the release's own encoding (Latin-1 for ml-1m / ml-100k, else UTF-8).
    encoding: str = "auto"
    #: The run fails when rejected ratings exceed this fraction of the ratings read.
    max_reject_fraction: float = 0.001

    def __post_init__(self) -> None:
        from recsys.data.layouts import LAYOUTS  # no Spark, numpy or TensorFlow behind it

        check = _Check("data", self).one_of("layout", ("auto", *LAYOUTS))
        check.within("max_reject_fraction", 0.0, 1.0)
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                check.fail("encoding", "'auto' or an encoding name such as 'UTF-8' or "
                                        "'ISO-8859-1'")


@dataclass(frozen=True)
class SplitConfig:
    """Evaluation split assignment (DESIGN §6), decided once in preprocessing."""

    seed: int = 42
    #: A rating >= this is a positive for the held-out-users protocol.
    positive_threshold: float = 4.0
    #: Users with fewer positives are never held out.
    min_positives: int = 5
    validation_users_fraction: float = 0.1
    test_users_fraction: float = 0.1
    #: Share of a held-out user's positives to be predicted (the rest is the input).
    holdout_fraction: float = 0.2

    def __post_init__(self) -> None:
        check = _Check("split", self).within("positive_threshold", 0.5, 5.0).at_least(
            1, "min_positives")
        check.within("validation_users_fraction", 0.0, 1.0)
        check.within("test_users_fraction", 0.0, 1.0)
        check.within("holdout_fraction", 0.0, 1.0, open_low=True, open_high=True)
        if self.validation_users_fraction + self.test_users_fraction > 1.0:
            raise ConfigError(
                "split.validation_users_fraction + split.test_users_fraction must be <= 1 "
                "(shares of the users eligible to be held out), got "
                f"{self.validation_users_fraction} + {self.test_users_fraction}")


@dataclass(frozen=True)
class PreprocessConfig:
    #: Keep at most this many tags (most frequent first) per movie in the movie table.
    max_tags_per_movie: int = 20
    #: Number of output files of the histories table.
    history_files: int = 8
    #: The largest share by which the users or the ratings may fall below the latest
    #: preprocess run's under the artifact root: a ratings export cut short upstream
    #: would otherwise publish a night without the users it lost. More fails the run
    #: (exit 3) with both counts; 1 = no check.
    max_shrink: float = 0.2

    def __post_init__(self) -> None:
        _Check("preprocess", self).at_least(0, "max_tags_per_movie").at_least(
            1, "history_files").within("max_shrink", 0.0, 1.0)


@dataclass(frozen=True)
class ModelConfig:
    """The two towers (DESIGN §5)."""

    #: "history" (watch-history user tower, the default) or "mf" (user-id embedding baseline).
    kind: str = "history"
    #: Output dimension of both towers (the space the index searches).
    embedding_dim: int = 64
    #: The user tower reads the last this many rated movies.
    history_length: int = 50
    #: Width of the user tower's attention block and of the movie-id embeddings.
    hidden_dim: int = 64
    attention_heads: int = 2
    #: Dense layer sizes after pooling (user) and after the feature concat (movie).
    tower_layers: tuple[int, ...] = (128,)
    #: Movies with fewer training ratings share one "rare" id embedding, so a new movie is
    #: embedded from its content alone.
    min_ratings_for_id: int = 1
    #: Title tokens: vocabulary size and tokens kept per title.
    title_vocab_size: int = 20000
    title_tokens: int = 8
    #: Use genome tag relevance when the corpus has it.
    use_genome: bool = True
    #: Dropout on the towers' inputs during training.
    dropout: float = 0.0
    #: The user tower reads history movies through the movie tower's id embedding.
    share_embeddings: bool = False
    #: L2-normalize tower outputs (dot product = cosine); the loss divides by temperature.
    normalize: bool = True
    temperature: float = 0.1

    def __post_init__(self) -> None:
        check = _Check("model", self).one_of("kind", MODEL_KINDS)
        check.at_least(1, "embedding_dim", "history_length", "hidden_dim", "attention_heads",
                       "title_vocab_size", "tower_layers")
        check.at_least(0, "min_ratings_for_id", "title_tokens")
        check.within("dropout", 0.0, 1.0, open_high=True).positive("temperature")
        if self.hidden_dim % self.attention_heads:
            raise ConfigError(f"model.hidden_dim ({self.hidden_dim}) must be a multiple of "
                              f"model.attention_heads ({self.attention_heads})")


@dataclass(frozen=True)
class TrainConfig:
    """Training (DESIGN §5): sampling of examples, optimizer, validation."""

    seed: int = 7
    epochs: int = 3
    #: Rows per batch: history windows (history model) or user rows (mf); each row carries
    #: up to ``targets_per_window`` targets, all of a batch's targets are its negatives.
    batch_size: int = 128
    learning_rate: float = 0.001
    #: At most about this many targets per training user per epoch (bounded cost on large
    #: corpora; a user gets ceil(examples_per_user / targets_per_window) windows at most).
    examples_per_user: int = 64
    #: Targets drawn from one history window; each is predicted from the ratings before it
    #: in the window (causal attention), so one pass over a window trains many targets.
    targets_per_window: int = 32
    #: Only ratings >= this are training targets; 0 keeps every rating (the default).
    min_target_rating: float = 0.0
    #: What a row teaches the history tower (README "The model", training objectives):
    #: "next_item" (DESIGN §5) predicts each target from the ratings before it only;
    #: "held_out_set" hides a random share of the user's candidate targets from the row's
    #: window and predicts them from the rest, earlier and later ratings alike (the shape of
    #: the held-out-users protocol, DESIGN §6; not causal).
    objective: str = "next_item"
    #: held_out_set: the share of a user's candidate targets each row hides (at least one).
    set_holdout_fraction: float = 0.2
    #: Users read from the histories Parquet per chunk; examples are shuffled per chunk.
    users_per_chunk: int = 8192
    #: In-batch softmax corrections (DESIGN §5).
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    #: Validation metric checked after every epoch; the best epoch's weights are kept.
    select_metric: str = "recall@20"
    #: Stop after this many epochs without improvement (0: run every epoch).
    patience: int = 2
    #: The trained model's select_metric on the validation users must reach this share of
    #: most-popular's there, or the run fails (exit 8) and the latest model stays the one
    #: scored: a model that does much worse than recommending the most popular movies is
    #: broken, not merely weak. Not checked with fewer than 20 validation users (too few to
    #: tell the two apart). 0 = not checked.
    min_recall_vs_popular: float = 0.5
    #: Validation users scored per batch when computing metrics.
    eval_batch_size: int = 512
    #: Write TensorBoard logs under <run>/tensorboard.
    tensorboard: bool = True

    def __post_init__(self) -> None:
        check = _Check("train", self).at_least(
            1, "epochs", "batch_size", "examples_per_user", "targets_per_window",
            "users_per_chunk", "eval_batch_size")
        check.at_least(0, "patience", "min_recall_vs_popular").positive("learning_rate")
        check.within("min_target_rating", 0.0, 5.0)
        check.one_of("objective", OBJECTIVES).one_of("select_metric", SELECT_METRICS)
        check.within("set_holdout_fraction", 0.0, 1.0, open_low=True, open_high=True)


def check_model_and_train(model: ModelConfig, train: TrainConfig) -> None:
    """The keys of ``[model]`` and ``[train]`` that must agree (checked by :class:`Config`
    and by what trains from the two sections alone)."""
    if train.objective == "held_out_set" and model.kind != "history":
        raise ConfigError("train.objective = 'held_out_set' needs model.kind = 'history' "
                          f"(got {model.kind!r}); for the mf model set "
                          "train.objective=next_item")


#: How the ScaNN searcher scores the movies of the leaves it searches (index.scoring).
INDEX_SCORING = ("auto", "brute", "ah")


@dataclass(frozen=True)
class IndexConfig:
    """The nearest-movie index (DESIGN §4.3)."""

    #: Neighbours the index is built and its recall measured for (= scoring's top N).
    num_neighbors: int = 100
    #: How ScaNN scores the movies of the leaves it searches: "brute" (float32 dot
    #: products; a tree of about 2 sqrt(movies) leaves), "ah" (asymmetric hashing + exact
    #: re-ordering; no tree up to 250,000 movies, else about sqrt(movies) leaves, half
    #: searched) or "auto" (brute up to 250,000 movies, else ah).
    scoring: str = "auto"
    #: ScaNN tree leaves, leaves searched, candidates re-ordered exactly (ah); 0 = sized
    #: to the catalog, and the one that sets the search's cost (leaves searched for brute,
    #: re-ordered for ah) tuned by the build: the cheapest value that reaches
    #: recall_floor + recall_margin on half the sampled users.
    leaves: int = 0
    leaves_to_search: int = 0
    reorder: int = 0
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    #: SOAR spilling in the tree: each movie also goes into a second leaf (ScaNN's
    #: soar_lambda); 0 = one leaf per movie.
    spill_lambda: float = 1.5
    #: Trees built at most: another is built while the tuned search needs more than a
    #: quarter of the leaves (a poor partition), and the cheapest one to search is kept.
    tree_builds: int = 3
    #: The build fails (nothing published) when ScaNN's recall@num_neighbors against exact
    #: search on sampled real user embeddings is below this.
    recall_floor: float = 0.99
    #: What the search tuning aims above the floor (the other half checks the floor).
    recall_margin: float = 0.005
    recall_sample_users: int = 2000
    #: Neighbours per movie in the similar-movies table (built here, published by score).
    similar_movies: int = 20

    def __post_init__(self) -> None:
        check = _Check("index", self).one_of("scoring", INDEX_SCORING).at_least(
            1, "num_neighbors", "dims_per_block", "recall_sample_users", "similar_movies",
            "tree_builds")
        check.at_least(0, "leaves", "leaves_to_search", "reorder", "recall_margin",
                       "spill_lambda")
        check.within("recall_floor", 0.0, 1.0)


@dataclass(frozen=True)
class ScoreConfig:
    """Scoring every user and publishing the tables (DESIGN §4.4-4.5)."""

    #: Movies recommended per user (already-rated movies excluded).
    top_n: int = 100
    #: Users per Arrow batch handed to the scoring UDF (bounds worker memory).
    batch_size: int = 4096
    #: Deeper searches (users who rated many movies) use the exact searcher.
    max_scann_depth: int = 1024
    #: Root of the published tables; "" = <artifact_root>/tables.
    table_root: str = ""
    #: Spark SQL database the tables are registered in.
    database: str = "default"
    recommendations_table: str = "movielens_recommendations"
    user_embeddings_table: str = "movielens_user_embeddings"
    similar_movies_table: str = "movielens_similar_movies"
    #: Whose calendar names the night (the tables' run_date) when --run-date is not
    #: given: "UTC", "local" (this machine's time zone: TZ or /etc/localtime) or an IANA
    #: name such as "Asia/Tokyo". A cron night at 02:15 in Tokyo is the day before in UTC.
    run_date_timezone: str = "UTC"
    #: Published nights kept in each table: after publishing, older nights than the
    #: newest keep_nights are dropped from the catalog and their files removed (tonight's
    #: is always kept, a back-filled older night too). 0 = keep every night.
    keep_nights: int = 0

    def __post_init__(self) -> None:
        _Check("score", self).at_least(1, "top_n", "batch_size", "max_scann_depth").at_least(
            0, "keep_nights").identifier(
            "database", "recommendations_table", "user_embeddings_table",
            "similar_movies_table")
        time_zone(self.run_date_timezone, "score.run_date_timezone")
        tables = (self.recommendations_table, self.user_embeddings_table,
                  self.similar_movies_table)
        if len({t.lower() for t in tables}) < len(tables):  # the catalog folds case
            raise ConfigError(
                "score.recommendations_table, score.user_embeddings_table and "
                "score.similar_movies_table must be three different names (their nights "
                "would be written into one directory and one catalog table), got "
                + ", ".join(repr(t) for t in tables))


@dataclass(frozen=True)
class SparkConfig:
    #: Used only when spark-submit did not already set a master.
    master: str = "local[2]"
    #: Used only when the driver JVM is started by Python (not under spark-submit).
    driver_memory: str = "6g"
    shuffle_partitions: int = 8
    #: spark.sql.files.maxPartitionBytes (input split size; Spark's default).
    max_partition_bytes: str = "128m"
    log_level: str = "WARN"
    ui_enabled: bool = False
    #: Register tables in a Hive metastore (persistent catalog) instead of in memory.
    hive_catalog: bool = True
    #: Directory of the embedded Derby metastore and the warehouse for local runs; ""
    #: uses the cluster's hive-site.xml instead.
    metastore_dir: str = "metastore"
    #: Local masters: where Spark's scratch (spark.local.dir: shuffle and spill files) goes,
    #: one directory per driver process; what a killed job left there is removed by the
    #: next job. "" = <tmp>/recsys-spark-<uid>. Not used when spark.local.dir or
    #: SPARK_LOCAL_DIRS is set, nor on a cluster (its workers have their own).
    scratch_dir: str = ""

    def __post_init__(self) -> None:
        check = _Check("spark", self).at_least(1, "shuffle_partitions").one_of(
            "log_level", SPARK_LOG_LEVELS, fold_case=True)
        for key in ("driver_memory", "max_partition_bytes"):
            check.matches(key, _BYTES, "a whole, positive number of bytes with an optional "
                                       "unit, e.g. '6g', '512m' or '128mb'", fold_case=True)
        check.matches("master", _MASTER, "a Spark master URL: local, local[N], local[*], "
                                         "local[N,F] (N, F >= 1), yarn, spark://HOST:PORT, "
                                         "k8s://URL")


@dataclass(frozen=True)
class EvaluateConfig:
    """Offline evaluation against baselines (DESIGN §6)."""

    #: ALS grid (every combination is fitted; the best Recall@20 on the validation users
    #: is used on every protocol).
    als_ranks: tuple[int, ...] = (64,)
    als_reg_params: tuple[float, ...] = (0.05, 0.3)
    als_implicit: tuple[bool, ...] = (False, True)
    als_max_iter: int = 10
    #: ALS user/item blocks (ml-latest-small fits in 7.9 s with 2, 15.9 s with Spark's 10).
    als_blocks: int = 2
    #: Confidence scale of implicit ALS (c = 1 + alpha * rating).
    als_alpha: float = 1.0
    #: EASE L2 regularization; EASE runs only on catalogs up to ease_max_movies (a dense
    #: movies x movies matrix is inverted).
    ease_l2: float = 500.0
    ease_max_movies: int = 20_000
    #: EASE models the movies with at least this many fitted ratings (the usual pruning;
    #: the others are never recommended by it).
    ease_min_count: int = 2
    #: Retrain the two-tower model on the random split's 80% to score that protocol.
    random_split_two_tower: bool = True

    def __post_init__(self) -> None:
        check = _Check("evaluate", self).not_empty("als_ranks", "als_reg_params", "als_implicit")
        check.at_least(1, "als_ranks", "als_max_iter", "ease_min_count")
        check.at_least(0, "als_reg_params", "als_blocks", "als_alpha", "ease_max_movies")
        check.positive("ease_l2")


@dataclass(frozen=True)
class NightlyConfig:
    """The cron pipeline (DESIGN §4.7): preprocess -> train -> index -> score -> evaluate."""

    #: Train only when the latest model is older than this (hours, counted from the start
    #: of its training, less an hour of slack: recsys.nightly.train_skip); 0 = train every
    #: night.
    max_model_age_hours: float = 24.0
    #: Train anyway, however young the model, when tonight's catalog has movies it has no
    #: embedding for, or lacks movies it has: false leaves them until the next training.
    retrain_on_catalog_change: bool = True
    #: Skip preprocessing while the release is the one the latest preprocess run read
    #: (the same files by size and MD5) with the same [data], [split] and [preprocess]
    #: settings: a static release (ml-25m) is otherwise preprocessed again every night.
    #: Off by default: after an upgrade that changes preprocessing, set it false once.
    skip_unchanged_release: bool = False
    #: Run the offline evaluation (stage 6) after publishing.
    evaluate: bool = True
    #: One log file per run is written here (local directory).
    log_dir: str = "logs"
    #: The lock against overlapping runs; "" = <log_dir>/nightly.lock (local path).
    lock_file: str = ""
    #: spark-submit used for the Spark stages; "" = the one next to this Python.
    spark_submit: str = ""
    #: Extra spark-submit arguments for the Spark stages, e.g. "--master yarn
    #: --archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python".
    spark_submit_args: str = ""
    #: JVM options of the score stage's driver. That JVM lives about half a minute and
    #: mostly starts Spark and hands rows to the Python workers, so only the JIT's quick
    #: tier (C1) is used: on the full-scale corpus the optimizing compiler alone took 12 s
    #: of CPU on a 2-core machine (README "Faster JVM start").
    score_java_options: str = "-XX:TieredStopAtLevel=1"
    #: A JDK class-data sharing archive for the score stage's driver JVM (local path); the
    #: night that finds it missing writes it (about 12 s more, once), every later night
    #: maps it. "" = none.
    class_archive: str = ""
    #: After a night that succeeds, keep this many of the newest runs of each stage,
    #: nightly summaries and log files, plus every run still in use (recsys.retention);
    #: 0 = keep everything. The published tables' nights are not pruned here
    #: (score.keep_nights).
    keep_runs: int = 7
    #: A stage still running after this many hours is stopped (SIGTERM, SIGKILL
    #: stop_grace_seconds later) and fails the night with its stage's exit code: a stage
    #: that hangs (a read that never returns) would otherwise hold the lock, and every
    #: later night would exit 10 until someone killed it. 0 = no limit. The full-scale
    #: evaluation, the longest stage, took 68 min with one ALS configuration (BENCHMARKS.md).
    stage_timeout_hours: float = 12.0
    #: A stage being stopped (a SIGTERM to the nightly, or stage_timeout_hours) gets this
    #: many seconds to unwind and record its run as failed; then whatever is left of its
    #: processes gets SIGKILL.
    stop_grace_seconds: float = 60.0

    def __post_init__(self) -> None:
        _Check("nightly", self).at_least(0, "max_model_age_hours", "keep_runs",
                                         "stage_timeout_hours", "stop_grace_seconds")
        for key in ("spark_submit_args", "score_java_options"):
            try:
                words = shlex.split(getattr(self, key))
            except ValueError as exc:  # an unclosed quote
                raise ConfigError(f"nightly.{key} is not a valid command line ({exc}): "
                                  f"{getattr(self, key)!r}") from None
            if key == "spark_submit_args" and words and words[-1] == "--master":
                raise ConfigError("nightly.spark_submit_args ends with --master and no "
                                  "master after it")


@dataclass(frozen=True)
class Config:
    #: Root of all artifacts (local path or any Hadoop URI: file://, hdfs://, s3a://).
    artifact_root: str = "artifacts"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)

    def __post_init__(self) -> None:
        check_model_and_train(self.model, self.train)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def with_input(self, source: str) -> "Config":
        return dataclasses.replace(self, data=dataclasses.replace(self.data, input=source))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool):
        if typ is float and isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got nan")
        if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    origin = typing.get_origin(typ)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(typ)
        return tuple(_coerce(v, item_type, f"{key}[]") for v in value)
    raise ConfigError(f"{key}: unsupported type {typ!r}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    types = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            known = ", ".join(sorted(types))
            raise ConfigError(f"unknown configuration key '{full}' (known here: {known})")
        typ = types[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, Mapping):
                raise ConfigError(f"'{full}' is a section; expected a table, got {value!r}")
            kwargs[key] = _build(typ, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(value, typ, full)
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if not dotted:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings need no quotes on the command line
    node: dict[str, Any] = {}
    cursor = node
    parts = dotted.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return node


def load_config(
    conf_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Defaults <- TOML file <- ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if conf_file is not None:
        path = Path(conf_file)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:  # an editor's byte order mark is not the file's text
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[:exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}: not UTF-8 text, as TOML files are: byte "
                              f"0x{exc.object[exc.start]:02x} on line {line}; save it as "
                              "UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration file {path}: "
                              f"{exc.strerror or exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for text in overrides:
        data = _merge(data, _parse_override(text))
    return _build(Config, data)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    return _build(Config, data)


# ---------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(config: Config) -> str:
    """The resolved configuration as TOML that :func:`load_config` reads back identically."""
    top: list[str] = []
    sections: list[str] = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            sections.append(f"\n[{key}]")
            sections.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
        else:
            top.append(f"{key} = {_toml_value(value)}")
    return "\n".join(top + sections) + "\n"


# ---------------------------------------------------------------------------- command line


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every job shares: a TOML file, the artifact root, and overrides."""
    parser.add_argument(
        "--conf-file", default=None,
        help="TOML configuration file (e.g. conf/prod.toml). Without one: recsys/config.py's "
             "defaults, sized for the full-scale corpus; conf/default.toml is the embedded "
             "corpus's (what `make run` uses).")
    parser.add_argument(
        "--artifact-root",
        default=None,
        help="Root of all artifacts, a local path or URI (overrides artifact_root).",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override one configuration value; repeatable (e.g. --set spark.master=local[4]).",
    )


def config_from_args(args: argparse.Namespace, *, trains: bool = False) -> Config:
    """The job's configuration. ``trains``: the job trains a model (train, evaluate, the
    nightly), so running it on the embedded corpus with the full-scale model is warned of."""
    config = load_config(args.conf_file, args.overrides)
    if getattr(args, "artifact_root", None):
        config = config.replace(artifact_root=args.artifact_root)
    if trains and args.conf_file is None and config.data.input == DataConfig().input \
            and config.model == ModelConfig() and config.train == TrainConfig():
        logging.getLogger(__name__).warning(
            "no --conf-file: the embedded corpus (%s) with the model and training defaults "
            "of recsys/config.py, which are sized for the full-scale corpus; pass "
            "--conf-file conf/default.toml for the embedded corpus's (what `make run` uses)",
            config.data.input)
    return config
