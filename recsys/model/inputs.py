"""Model inputs in numpy: the movie catalog's feature tables and user-history windows.

Everything the towers read is an integer *model index*: ``0`` is padding (and any movie
the model does not know), ``i + 1`` is the movie at position ``i`` of the preprocess
movie vocabulary (most rated first). The movie tower looks its content features up by
that index in constant tables built here, so the training pipeline moves only small
integer arrays.

History windows are **left-padded**: the most recent rating is in the last column, so
"the last L ratings" is always ``window[:, -L:]`` whatever the width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.config import ModelConfig
from recsys.csr import list_column

PAD = 0
_YEAR_MIN, _YEAR_STEP, _YEAR_BUCKETS = 1900, 3, 44
_TITLE_YEAR = re.compile(r"\s*\(\s*\d{4}\s*(?:[-–]\s*\d{0,4}\s*)?\)\s*$")
_TOKEN = re.compile(r"[0-9a-z]+")


def title_words(title: str) -> list[str]:
    """Lower-case word tokens of a title, without its trailing ``(YYYY)``."""
    return _TOKEN.findall(_TITLE_YEAR.sub("", title or "").lower())


def year_bucket(years: np.ndarray) -> np.ndarray:
    """0 for an unknown year, else a 3-year bucket 1..44 (1900 and earlier -> 1)."""
    years = np.asarray(years, dtype=np.float64)
    known = np.isfinite(years) & (years > 0)
    bucket = np.clip((np.nan_to_num(years) - _YEAR_MIN) // _YEAR_STEP, 0, _YEAR_BUCKETS - 1) + 1
    return np.where(known, bucket, 0).astype(np.int32)


def _padded(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        row = row[:width]
        out[i, : len(row)] = row
    return out


@dataclass
class MovieCatalog:
    """Per-movie feature tables indexed by model index (row 0 is padding)."""

    movie_ids: np.ndarray  # int64 [V]; model index = position + 1
    genres: list[str]
    genre_ids: np.ndarray  # int32 [V+1, G]; genre index + 1, 0 = none
    title_vocab: list[str]
    title_tokens: np.ndarray  # int32 [V+1, T]; token index + 1, 0 = none
    year_bucket: np.ndarray  # int32 [V+1]
    genome_rows: np.ndarray  # int32 [V+1]; row of `genome`, 0 = no genome
    genome: np.ndarray  # float32 [n+1, tags]; row 0 is zeros

    @property
    def size(self) -> int:
        return int(self.movie_ids.size)

    def __post_init__(self) -> None:
        order = np.argsort(self.movie_ids, kind="stable")
        self._sorted_ids = self.movie_ids[order]
        self._sorted_index = (order + 1).astype(np.int32)

    def index_of(self, movie_ids: np.ndarray) -> np.ndarray:
        """Model indices of raw movie ids (0 for ids not in the catalog)."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, self._sorted_ids.size - 1)
        found = self._sorted_ids[pos] == ids
        return np.where(found, self._sorted_index[pos], PAD).astype(np.int32)

    def id_of(self, index: np.ndarray) -> np.ndarray:
        """Raw movie ids of model indices (index 0 has no movie)."""
        return self.movie_ids[np.asarray(index) - 1]

    @classmethod
    def from_tables(cls, movies: pa.Table, vocab: pa.Table, config: ModelConfig) -> "MovieCatalog":
        """Build from the preprocess ``movies`` table and ``vocab/movies``."""
        vocab = vocab.sort_by("index")
        movie_ids = vocab.column("movie_id").to_numpy().astype(np.int64)
        info = {row["movie_id"]: row for row in movies.select(
            ["movie_id", "title", "year", "genres", "genome"]).to_pylist()}
        missing = [int(m) for m in movie_ids if int(m) not in info][:5]
        if missing:
            raise ValueError(f"vocab/movies names movies absent from the movie table: {missing}")
        rows = [info[int(m)] for m in movie_ids]

        genres = sorted({g for r in rows for g in (r["genres"] or [])})
        genre_pos = {g: i + 1 for i, g in enumerate(genres)}
        genre_rows = [[genre_pos[g] for g in (r["genres"] or [])] for r in rows]
        width = max([len(g) for g in genre_rows] + [1])
        genre_ids = np.vstack([np.zeros((1, width), np.int32), _padded(genre_rows, width)])

        words = [title_words(r["title"]) for r in rows]
        counts: dict[str, int] = {}
        for ws in words:
            for w in set(ws):
                counts[w] = counts.get(w, 0) + 1
        kept = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
        title_vocab = kept[: config.title_vocab_size]
        token_pos = {w: i + 1 for i, w in enumerate(title_vocab)}
        token_rows = [[token_pos[w] for w in ws if w in token_pos] for ws in words]
        title_tokens = np.vstack([
            np.zeros((1, config.title_tokens), np.int32),
            _padded(token_rows, config.title_tokens),
        ])

        years = np.array([r["year"] if r["year"] is not None else np.nan for r in rows])
        year = np.concatenate([[0], year_bucket(years)]).astype(np.int32)

        genome_rows = np.zeros(len(rows) + 1, np.int32)
        vectors = []
        if config.use_genome:
            for i, r in enumerate(rows):
                if r["genome"]:
                    vectors.append(np.asarray(r["genome"], np.float32))
                    genome_rows[i + 1] = len(vectors)
        if vectors and len({v.size for v in vectors}) != 1:
            raise ValueError("genome vectors of different lengths in the movie table")
        tags = vectors[0].size if vectors else 0
        genome = np.vstack([np.zeros((1, tags), np.float32), *vectors]) if vectors else \
            np.zeros((1, 0), np.float32)
        return cls(movie_ids, genres, genre_ids, title_vocab, title_tokens, year,
                   genome_rows, genome)


# ---------------------------------------------------------------------------- histories


def windows(
    movies: np.ndarray,
    ratings: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded windows of the last ``length`` items of ``flat[starts[i]:ends[i]]``.

    Returns ``(movies [n, length] int32, ratings [n, length] float32)``; padding is 0.
    """
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    idx = ends[:, None] - length + np.arange(length, dtype=np.int64)[None, :]
    valid = idx >= np.maximum(starts, ends - length)[:, None]
    safe = np.where(valid, idx, 0)
    if movies.size == 0:
        return (np.zeros(idx.shape, np.int32), np.zeros(idx.shape, np.float32))
    out_m = np.where(valid, movies[safe], PAD).astype(np.int32)
    out_r = np.where(valid, ratings[safe], 0.0).astype(np.float32)
    return out_m, out_r


def pad_histories(
    histories: list[np.ndarray], ratings: list[np.ndarray], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded windows from per-user arrays (oldest first), for small batches."""
    lengths = np.array([len(h) for h in histories], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat_m = np.concatenate(histories) if histories else np.zeros(0, np.int32)
    flat_r = np.concatenate(ratings) if ratings else np.zeros(0, np.float32)
    return windows(flat_m, flat_r, offsets[:-1], offsets[1:], length)


@dataclass
class UserChunk:
    """A slice of the histories table as flat numpy arrays (one user per offset range)."""

    user_ids: np.ndarray  # int64 [U]
    offsets: np.ndarray  # int64 [U+1]
    movies: np.ndarray  # int32 flat model indices (0 = unknown movie)
    ratings: np.ndarray  # float32 flat

    @classmethod
    def from_batch(cls, batch: pa.RecordBatch | pa.Table, catalog: MovieCatalog) -> "UserChunk":
        offsets, movie_ids = list_column(batch.column("movie_ids"))
        _, ratings = list_column(batch.column("ratings"))
        user_ids = batch.column("user_id").to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(user_ids, offsets, catalog.index_of(movie_ids),
                   ratings.astype(np.float32))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def owners(self) -> np.ndarray:
        return np.repeat(np.arange(self.user_ids.size), self.lengths)
