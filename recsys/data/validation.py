"""Row validation and quarantine (DESIGN §3).

Each table is turned into typed canonical columns plus ``reason`` (null for a valid row)
and ``record`` (the raw line, for the rejects output). The first failing rule names the
reason. Reasons are stable strings, documented in the README:

=====================  ====================================================
wrong_field_count      the line does not have the layout's number of fields
bad_encoding           a text field is not valid in the file's encoding (read as U+FFFD)
bad_user_id            user id is not a non-negative 32-bit integer
bad_movie_id           movie id is not a non-negative 32-bit integer
bad_tag_id             genome tag id is not a non-negative 32-bit integer
bad_rating             rating is not a number
rating_out_of_range    rating outside 0.5 .. 5.0
rating_not_half_star   rating is not a multiple of 0.5
bad_timestamp          timestamp is not an integer (Unix seconds)
timestamp_out_of_range timestamp before 1970 or after the run's start (plus a day of skew)
bad_relevance          genome relevance is not a number in [0, 1]
missing_title          empty movie title
missing_tag            empty tag text
duplicate_pair         a later or equal-time rating of the same (user, movie) exists
duplicate_movie_id     the movie id appeared earlier in movies
unknown_movie          the movie id is not in movies
=====================  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys.data.layouts import GENRES_100K, NO_GENRES, TableSpec
from recsys.data.readers import CORRUPT, FAST_OK, NUMERIC_TABLES

_BOM = "\ufeff"
_REPLACEMENT = "\ufffd"
_ID_RE = r"^[0-9]{1,10}$"
_INT_RE = r"^-?[0-9]{1,19}$"
_NUM_RE = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"

REASONS = (
    "wrong_field_count", "bad_encoding", "bad_user_id", "bad_movie_id", "bad_tag_id",
    "bad_rating", "rating_out_of_range", "rating_not_half_star", "bad_timestamp",
    "timestamp_out_of_range", "bad_relevance", "missing_title", "missing_tag",
    "duplicate_pair", "duplicate_movie_id", "unknown_movie",
)


@dataclass(frozen=True)
class _Field:
    raw: str
    name: str
    kind: str  # id | timestamp | rating | relevance | text | opt_text | opt_id
    reason: str | None


_FAST_CAST = {"id": "int", "timestamp": "bigint", "rating": "float", "relevance": "float"}


def _id(c: Column) -> Column:
    return F.when(c.rlike(_ID_RE), c.try_cast("int"))


def _check(field: _Field, c: Column):  # noqa: ANN202
    """(typed value of raw column ``c``, function (typed, raw) -> invalid condition)."""
    if field.kind == "id":
        return _id(c), lambda v, raw: v.isNull()
    if field.kind == "opt_id":
        return _id(c), lambda v, raw: raw.isNotNull() & v.isNull()
    if field.kind == "timestamp":
        return F.when(c.rlike(_INT_RE), c.try_cast("bigint")), lambda v, raw: v.isNull()
    if field.kind in ("rating", "relevance"):
        value = F.when(c.rlike(_NUM_RE), c.try_cast("double")).cast("float")
        return value, lambda v, raw: v.isNull()
    if field.kind == "text":
        return c, lambda v, raw: v.isNull() | (F.length(F.trim(v)) == 0)
    if field.kind == "opt_text":
        return c, lambda v, raw: F.lit(False)
    raise ValueError(field.kind)


_FIELDS: dict[str, tuple[_Field, ...]] = {
    "ratings": (
        _Field("userId", "user_id", "id", "bad_user_id"),
        _Field("movieId", "movie_id", "id", "bad_movie_id"),
        _Field("rating", "rating", "rating", "bad_rating"),
        _Field("timestamp", "timestamp", "timestamp", "bad_timestamp"),
    ),
    "movies": (
        _Field("movieId", "movie_id", "id", "bad_movie_id"),
        _Field("title", "title", "text", "missing_title"),
        _Field("genres", "genres_raw", "opt_text", None),
    ),
    "tags": (
        _Field("userId", "user_id", "id", "bad_user_id"),
        _Field("movieId", "movie_id", "id", "bad_movie_id"),
        _Field("tag", "tag", "text", "missing_tag"),
        _Field("timestamp", "timestamp", "timestamp", "bad_timestamp"),
    ),
    "links": (
        _Field("movieId", "movie_id", "id", "bad_movie_id"),
        _Field("imdbId", "imdb_id", "opt_text", None),
        _Field("tmdbId", "tmdb_id", "opt_id", "bad_movie_id"),
    ),
    "genome_scores": (
        _Field("movieId", "movie_id", "id", "bad_movie_id"),
        _Field("tagId", "tag_id", "id", "bad_tag_id"),
        _Field("relevance", "relevance", "relevance", "bad_relevance"),
    ),
    "genome_tags": (
        _Field("tagId", "tag_id", "id", "bad_tag_id"),
        _Field("tag", "tag", "text", "missing_tag"),
    ),
}


def tag_rows(raw: DataFrame, spec: TableSpec, *, latest_timestamp: int | None = None) -> DataFrame:
    """Typed canonical columns + ``reason`` + ``record`` for one raw table.

    ``latest_timestamp``: Unix seconds after which a timestamp cannot be real (a rating
    from the future, or one written in milliseconds); such rows, and those before 1970,
    are ``timestamp_out_of_range``. None: only the lower bound is checked.
    """
    columns = list(spec.columns)
    if spec.name == "movies" and "g0" in spec.columns:  # ml-100k u.item: genre flags
        flags = [F.when(F.col(f"g{i}") == "1", F.lit(g)) for i, g in enumerate(GENRES_100K)]
        raw = raw.withColumn("genres", F.concat_ws("|", *flags))
        columns.append("genres")
    fields = _FIELDS[spec.name]
    # Numeric tables mark lines that already have the form of valid values: those skip
    # the per-field form checks (regexes), which dominate the cost on 25M ratings.
    has_fast = FAST_OK in raw.columns
    fast = F.col(FAST_OK) if has_fast else F.lit(False)
    first = spec.columns[0]
    raw = raw.select(*[F.col(c).alias(f"_raw_{c}") for c in columns], CORRUPT, fast.alias(FAST_OK))
    # A BOM can only start the first field (of a headerless file); a well-formed line has none.
    raw = raw.withColumn(
        f"_raw_{first}",
        F.when(F.col(FAST_OK), F.col(f"_raw_{first}"))
        .otherwise(F.regexp_replace(F.col(f"_raw_{first}"), f"^{_BOM}", "")),
    )

    # Step 1: typed values (null when the text does not have the form of a valid value).
    # Step 2, in a separate projection so that each value is computed once: the reason.
    values, checks = [], []
    for field in fields:
        raw_col = F.col(f"_raw_{field.raw}")
        value, invalid_of = _check(field, raw_col)
        if has_fast and field.kind in _FAST_CAST:
            value = F.when(F.col(FAST_OK), raw_col.try_cast(_FAST_CAST[field.kind])).otherwise(value)
        values.append(value.alias(field.name))
        if field.reason is not None:
            checks.append((invalid_of(F.col(field.name), raw_col), field.reason))
    typed = raw.select(*values, *[f"_raw_{c}" for c in columns], CORRUPT, FAST_OK)

    reason = F.when(F.col(CORRUPT).isNotNull(), F.lit("wrong_field_count"))
    # Bytes that are not valid in the file's encoding are read as U+FFFD: a title or tag
    # read that way is damaged (most often the whole file is in another encoding).
    texts = [f"_raw_{f.raw}" for f in fields if f.kind in ("text", "opt_text")]
    if texts:
        damaged = F.lit(False)
        for c in texts:
            damaged = damaged | F.coalesce(F.col(c).contains(_REPLACEMENT), F.lit(False))
        reason = reason.when(damaged, F.lit("bad_encoding"))
    for invalid, name in checks:
        reason = reason.when(invalid, F.lit(name))
    if spec.name == "ratings":
        rating = F.col("rating")
        reason = reason.when((rating < 0.5) | (rating > 5.0), F.lit("rating_out_of_range")).when(
            rating * 2 != F.round(rating * 2), F.lit("rating_not_half_star")
        )
    if any(f.kind == "timestamp" for f in fields):
        ts = F.col("timestamp")
        outside = ts < 0 if latest_timestamp is None else (ts < 0) | (ts > latest_timestamp)
        reason = reason.when(outside, F.lit("timestamp_out_of_range"))
    if spec.name == "genome_scores":
        rel = F.col("relevance")
        reason = reason.when((rel < 0.0) | (rel > 1.0), F.lit("bad_relevance"))

    record = F.coalesce(F.col(CORRUPT), F.concat_ws(
        spec.sep, *[F.coalesce(F.col(f"_raw_{c}"), F.lit("")) for c in spec.columns]
    ))
    out = typed.withColumn("reason", reason)
    if spec.name in NUMERIC_TABLES:
        # big tables: keep the raw text of rejected rows only (else it doubles the shuffle)
        record = F.when(F.col("reason").isNotNull(), record)
    out = out.select(*[f.name for f in fields], "reason", record.alias("record"))
    if spec.name == "movies":
        out = _movie_columns(out)
    return out


def _movie_columns(df: DataFrame) -> DataFrame:
    title = F.trim(F.col("title"))
    year = F.regexp_extract(title, r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$", 1)
    genres = F.filter(
        F.split(F.coalesce(F.col("genres_raw"), F.lit("")), r"\|"),
        lambda g: (g != "") & (g != NO_GENRES),
    )
    return df.withColumn("title", title).withColumn(
        "year", F.when(year != "", year.cast("int"))
    ).withColumn("genres", genres).drop("genres_raw")


def rejects_of(tagged: DataFrame, spec: TableSpec) -> DataFrame:
    """The quarantined rows of a tagged table, in the rejects output's schema.

    In the big numeric tables, rows rejected after parsing (duplicate pairs, unknown
    movies) had no raw text kept: their record is rebuilt from the parsed values.
    """
    record = F.col("record")
    if spec.name in NUMERIC_TABLES:
        typed = [f.name for f in _FIELDS[spec.name]]
        record = F.coalesce(record, F.concat_ws(
            spec.sep, *[F.coalesce(F.col(c).cast("string"), F.lit("")) for c in typed]
        ))
    return tagged.where(F.col("reason").isNotNull()).select(
        F.lit(spec.filename).alias("source"), "reason", record.alias("record")
    )


def valid_of(tagged: DataFrame) -> DataFrame:
    return tagged.where(F.col("reason").isNull()).drop("reason", "record")


def mark_duplicate_movies(movies: DataFrame) -> DataFrame:
    """The first row of a movie id (in file order) is kept, later ones are quarantined."""
    order = F.monotonically_increasing_id()
    with_pos = movies.withColumn("_pos", order)
    w = Window.partitionBy("movie_id").orderBy("_pos")
    rank = F.row_number().over(w)
    return with_pos.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (rank > 1), F.lit("duplicate_movie_id")).otherwise(
            F.col("reason")
        ),
    ).drop("_pos")


def mark_unknown_movies(tagged: DataFrame, movie_ids: DataFrame) -> DataFrame:
    """Quarantine rows whose movie id is not in ``movie_ids`` (a small, broadcast table)."""
    known = F.broadcast(movie_ids.select("movie_id").distinct().withColumn("_known", F.lit(True)))
    return (
        tagged.join(known, on="movie_id", how="left")
        .withColumn(
            "reason",
            F.when(F.col("reason").isNull() & F.col("_known").isNull(), F.lit("unknown_movie"))
            .otherwise(F.col("reason")),
        )
        .drop("_known")
    )
