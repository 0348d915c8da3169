"""A synthetic MovieLens corpus in the exact ml-25m file layout (DESIGN §3).

Nothing here comes from a real release: the generator draws a corpus with the statistical
shape of ml-25m so that the pipeline can be benchmarked at full scale where the real
25M release may not be redistributed or downloaded.

The model behind it:

* movies have a latent taste vector, a Zipf-like popularity, a release year skewed to
  recent decades, 1–3 genres from the real genre list chosen by their taste vector, and
  title words partly drawn from their genres' word pools (so content features carry
  signal);
* users belong to a mixture of two taste clusters; which movies they rate is drawn from
  popularity × exp(taste affinity), so a model can learn who watches what;
* user activity is heavy-tailed (every user >= 20 ratings), ratings come from affinity +
  movie quality + user bias + noise, mapped onto the real 25M half-star rating mix;
* timestamps lie in the real range (1995-01-09 .. 2019-11-21), each user active over a
  heavy-tailed span;
* tags.csv, links.csv, genome-scores.csv (the most rated movies × 1,128 tags) and
  genome-tags.csv complete the layout. Files are UTF-8 with CRLF line endings, titles
  quoted when they contain commas, like the official files.

Deterministic: the same spec and seed give byte-identical files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys import io
from recsys.config import ConfigError
from recsys.data.layouts import GENRES, NO_GENRES
from recsys.spark import process_alive

log = logging.getLogger(__name__)

FULL_USERS = 162_541
FULL_MOVIES = 62_423
FULL_RATINGS = 25_000_095
FULL_TAGS = 1_093_360
FULL_GENOME_MOVIES = 13_816
GENOME_TAGS = 1_128
FIRST_TIMESTAMP = 789_652_009  # 1995-01-09
LAST_TIMESTAMP = 1_574_327_703  # 2019-11-21

#: Share of each half-star rating in ml-25m, 0.5 .. 5.0.
RATING_LEVELS = np.arange(1, 11, dtype=np.int64) / 2.0
RATING_MIX = np.array(
    [393_068, 776_815, 399_490, 1_640_868, 1_262_797, 4_896_928, 3_177_318, 6_639_798,
     2_200_539, 3_612_474], dtype=np.float64,
)
RATING_MIX /= RATING_MIX.sum()

_WORDS = (
    "night day love war city man woman girl boy story last first dark light blood fire "
    "water house road king queen secret dream heart time life death world star moon sun "
    "shadow ghost game lost home river winter summer return rise fall journey island "
    "mountain wild silent golden iron glass black white red blue green little big "
    "american french great long final hidden broken empty strange sweet cold hot"
).split()


@dataclass(frozen=True)
class SyntheticSpec:
    users: int = FULL_USERS
    movies: int = FULL_MOVIES
    ratings: int = FULL_RATINGS
    seed: int = 0
    #: Dimension of the latent taste space.
    dim: int = 16
    #: Number of taste clusters users are drawn from.
    clusters: int = 64
    #: How strongly taste affinity (vs. popularity alone) decides what users rate.
    taste_strength: float = 2.5
    #: Tag applications; None scales ml-25m's count with the number of ratings.
    tags: int | None = None
    #: Movies with genome scores; None scales ml-25m's count with the number of movies.
    genome_movies: int | None = None
    genome_tags: int = GENOME_TAGS

    def resolved(self) -> "SyntheticSpec":
        tags = self.tags if self.tags is not None else round(FULL_TAGS * self.ratings / FULL_RATINGS)
        genome = (
            self.genome_movies
            if self.genome_movies is not None
            else round(FULL_GENOME_MOVIES * self.movies / FULL_MOVIES)
        )
        return replace(self, tags=tags, genome_movies=min(genome, self.movies))

    def validate(self) -> None:
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"the seed must be an integer in 0 .. 2**32 - 1, got {self.seed}")
        if self.users < 1 or self.movies < 40:
            raise ValueError("need at least 1 user and 40 movies")
        if self.ratings < 20 * self.users:
            raise ValueError(
                f"{self.ratings} ratings cannot give each of {self.users} users >= 20 ratings"
            )
        if self.ratings > self.users * (self.movies // 2):
            raise ValueError(
                f"{self.ratings} ratings exceed what {self.users} users can rate when each "
                f"rates at most half of {self.movies} movies"
            )


# ---------------------------------------------------------------------------- movies


def _movie_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    # Sparse, increasing ids like the real ones (ml-25m ids run up to ~209k).
    pool = rng.choice(np.arange(1, int(n * 3.35) + 2), size=n, replace=False)
    return np.sort(pool).astype(np.int64)


def _popularity(rng: np.random.Generator, n: int) -> np.ndarray:
    ranks = rng.permutation(n).astype(np.float64)
    weights = (ranks + max(2.0, 20.0 * n / FULL_MOVIES)) ** -1.25
    return weights / weights.sum()


def _genres(rng: np.random.Generator, taste: np.ndarray) -> tuple[list[str], np.ndarray]:
    n, dim = taste.shape
    directions = rng.standard_normal((len(GENRES), dim))
    affinity = taste @ directions.T + rng.gumbel(size=(n, len(GENRES))) * 0.6
    k = rng.choice([1, 2, 3], size=n, p=[0.35, 0.38, 0.27])
    order = np.argsort(-affinity, axis=1)
    none = rng.random(n) < 0.008
    out = []
    for i in range(n):
        if none[i]:
            out.append(NO_GENRES)
        else:
            out.append("|".join(sorted(GENRES[j] for j in order[i, : k[i]])))
    return out, order[:, 0]


def _titles(rng: np.random.Generator, years: np.ndarray, top_genre: np.ndarray) -> list[str]:
    pools = [rng.choice(len(_WORDS), size=8, replace=False) for _ in GENRES]
    n = len(years)
    lengths = rng.choice([1, 2, 3, 4], size=n, p=[0.25, 0.4, 0.25, 0.1])
    from_genre = rng.random((n, 4)) < 0.6
    pool_pick = rng.integers(0, 8, size=(n, 4))
    any_pick = rng.integers(0, len(_WORDS), size=(n, 4))
    article = rng.random(n)
    titles = []
    for i in range(n):
        words = [
            _WORDS[pools[top_genre[i]][pool_pick[i, j]]] if from_genre[i, j] else _WORDS[any_pick[i, j]]
            for j in range(lengths[i])
        ]
        title = " ".join(w.capitalize() for w in words)
        if article[i] < 0.12:
            title += ", The"  # MovieLens style: "Matrix, The (1999)" -> quoted in CSV
        elif article[i] < 0.16:
            title += f" {i % 7 + 2}"
        titles.append(f"{title} ({years[i]})")
    return titles


# ---------------------------------------------------------------------------- users


def _activity(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """Ratings per user: >= 20, heavy-tailed, summing exactly to ``spec.ratings``."""
    cap = min(spec.movies // 2, 32_202)
    extra_total = spec.ratings - 20 * spec.users
    raw = rng.lognormal(mean=0.0, sigma=1.45, size=spec.users)
    counts = np.zeros(spec.users, dtype=np.int64)
    for _ in range(50):  # rescale until the cap stops biting
        free = counts < cap - 20
        remaining = extra_total - counts[~free].sum()
        share = raw[free] / raw[free].sum() * remaining
        counts[free] = np.minimum(np.floor(share).astype(np.int64), cap - 20)
        if (counts[free] < cap - 20).all():
            break
    deficit = extra_total - counts.sum()
    while deficit > 0:
        room = np.flatnonzero(counts < cap - 20)
        pick = rng.choice(room, size=min(deficit, room.size), replace=False)
        counts[pick] += 1
        deficit = extra_total - counts.sum()
    return counts + 20


def _sample_unique(
    rng: np.random.Generator,
    counts: np.ndarray,
    user_clusters: np.ndarray,
    cluster_cdfs: np.ndarray,
    num_movies: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each user, ``counts[u]`` distinct movies drawn from their clusters' mixture."""
    have_u = np.empty(0, dtype=np.int64)
    have_m = np.empty(0, dtype=np.int64)
    need = counts.copy()
    for round_ in range(12):
        want = np.flatnonzero(need > 0)
        if want.size == 0:
            break
        draws = np.ceil(need[want] * (1.25 if round_ == 0 else 2.0)).astype(np.int64) + 4
        du = np.repeat(want, draws)
        if round_ < 3:
            which = (rng.random(du.size) < 0.3).astype(np.int64)  # secondary cluster 30%
            clusters = user_clusters[du, which]
            u01 = rng.random(du.size)
            dm = np.empty(du.size, dtype=np.int64)
            order = np.argsort(clusters, kind="stable")
            bounds = np.searchsorted(clusters[order], np.arange(cluster_cdfs.shape[0] + 1))
            for c in range(cluster_cdfs.shape[0]):
                idx = order[bounds[c] : bounds[c + 1]]
                dm[idx] = np.searchsorted(cluster_cdfs[c], u01[idx], side="right")
            np.minimum(dm, num_movies - 1, out=dm)
        else:  # the last few of very active users: fill uniformly
            dm = rng.integers(0, num_movies, size=du.size)
        keys = np.concatenate([have_u * num_movies + have_m, du * num_movies + dm])
        # first occurrence wins: existing picks come first in `keys`
        uniq, first = np.unique(keys, return_index=True)
        priority = np.where(first < have_u.size, -1.0, rng.random(uniq.size))
        uu = uniq // num_movies
        order = np.lexsort((priority, uu))
        uu, uniq = uu[order], uniq[order]
        starts = np.searchsorted(uu, np.arange(counts.size))
        rank = np.arange(uu.size) - starts[uu]
        keep = rank < counts[uu]
        uu, uniq = uu[keep], uniq[keep]
        have_u, have_m = uu, uniq % num_movies
        need = counts - np.bincount(have_u, minlength=counts.size)
    if (need > 0).any():
        raise RuntimeError("could not draw enough distinct movies for some users")
    keys = np.sort(have_u * num_movies + have_m)  # the official files are sorted by user, movie
    return keys // num_movies, keys % num_movies


# ---------------------------------------------------------------------------- writing


def _csv_column(values: pa.Array) -> pa.Array:
    """One column as CSV text: numbers as they print, strings quoted only when needed."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        needs = pc.match_substring_regex(values, r'[,"\r\n]')
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
        return pc.if_else(needs, quoted, values)
    return pc.cast(values, pa.string())


def _write_csv(path: str, columns: dict[str, object], *, append: bool = False,
               chunk: int = 2_000_000) -> None:
    """Write a CSV exactly as the official files are: header, CRLF, minimal quoting.

    Each chunk is joined into CRLF-terminated lines by Arrow; the lines' contiguous value
    buffer is the file content, so writing it is a single copy.
    """
    arrays = {k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()}
    n = len(next(iter(arrays.values())))
    with open(path, "ab" if append else "wb") as out:
        if not append:
            out.write((",".join(arrays) + "\r\n").encode())
        for start in range(0, n, chunk):
            cols = [_csv_column(a.slice(start, chunk)) for a in arrays.values()]
            lines = pc.binary_join_element_wise(*cols, ",")
            lines = pc.binary_join_element_wise(lines, "", "\r\n")  # CRLF after each line
            _, offsets_buf, data = lines.buffers()
            offsets = np.frombuffer(offsets_buf, dtype=np.int32)[lines.offset:]
            out.write(memoryview(data)[offsets[0]: offsets[len(lines)]])


#: First line of the README.txt every corpus starts with: a directory that holds other
#: files (a MovieLens release, say) is never written into.
README_MARK = "Synthetic MovieLens-format corpus, written by movielens-recs make_synthetic_corpus."


def _check_out_dir(out_dir: str) -> None:
    """``out_dir`` is new, empty, or a corpus this generator wrote (which is replaced)."""
    readme = os.path.join(out_dir, "README.txt")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir} is a file, not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        try:
            with open(readme, encoding="utf-8") as fh:
                ours = fh.readline().strip() == README_MARK
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            found = ", ".join(sorted(os.listdir(out_dir))[:4])
            raise ConfigError(f"--out {out_dir} holds files this command did not write "
                              f"({found}, ...): give a new or empty directory; its files would "
                              "be overwritten")


_PARTIAL = ".partial-"


def _staging_dir(out_dir: str, spec: SyntheticSpec) -> str:
    """A new directory beside ``out_dir`` to write the corpus in, marked as a corpus; the
    ones that runs killed outright left there (their process gone) are removed first."""
    parent, base = os.path.split(os.path.abspath(out_dir))
    prefix = f".{base}{_PARTIAL}"
    staging = None
    try:
        os.makedirs(parent, exist_ok=True)
        for name in os.listdir(parent):
            pid = name[len(prefix):].partition("-")[0]
            if name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # as a directory made the usual way (not 0700)
        with open(os.path.join(staging, "README.txt"), "w", encoding="utf-8") as fh:
            fh.write(f"{README_MARK}\nNot GroupLens data: users, movies and ratings are drawn "
                     f"at random (seed {spec.seed}) with {spec.users:,} users, {spec.movies:,} "
                     f"movies and {spec.ratings:,} ratings, in the ml-25m file layout.\n")
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        full = io.storage_full(exc, writing=f"the corpus in {staging or parent}, beside "
                                            f"--out {out_dir}")
        if full is not None:
            raise io.StorageFullError(full) from exc
        raise ConfigError(f"cannot write the corpus to --out {out_dir}: "
                          f"{exc.strerror or exc}") from None
    return staging


def _put_in_place(staging: str, out_dir: str) -> None:
    """The whole corpus at ``out_dir`` at once: swapped with an earlier one (atomic where
    the filesystem can), which is then removed."""
    if not os.path.isdir(out_dir):
        os.rename(staging, out_dir)
        return
    if io.exchange(staging, out_dir):
        shutil.rmtree(staging)  # the earlier corpus now
        return
    old = staging + ".old"
    os.rename(out_dir, old)
    os.rename(staging, out_dir)
    shutil.rmtree(old)


def generate(spec: SyntheticSpec, out_dir: str) -> dict[str, int]:
    """Write ratings.csv, movies.csv, tags.csv, links.csv, genome-scores.csv and
    genome-tags.csv (and a README.txt saying what they are) into ``out_dir``, which must be
    new, empty or an earlier corpus; returns row counts. The files are written in a
    directory beside it and moved into place when all are written: a run stopped part way
    (a full disk, a kill) leaves no corpus that looks whole but is cut short, which a
    preprocess run would read as a smaller one; an earlier corpus there stays until then."""
    spec = spec.resolved()
    spec.validate()
    _check_out_dir(out_dir)
    staging = _staging_dir(out_dir, spec)
    try:
        with io.names_storage_errors(f"the corpus in {staging}, beside --out {out_dir}"):
            counts = _write_corpus(spec, staging)
            _put_in_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("corpus written to %s", out_dir)
    return counts


def _write_corpus(spec: SyntheticSpec, out_dir: str) -> dict[str, int]:
    rng = np.random.default_rng(spec.seed)
    t0 = time.perf_counter()
    M, U, D = spec.movies, spec.users, spec.dim

    # Movies -----------------------------------------------------------------
    movie_ids = _movie_ids(rng, M)
    taste = rng.standard_normal((M, D)) / np.sqrt(D)
    popularity = _popularity(rng, M)
    quality = rng.standard_normal(M)
    years = np.clip(2019 - np.floor(rng.exponential(18.0, size=M)).astype(np.int64), 1902, 2019)
    genres, top_genre = _genres(rng, taste)
    titles = _titles(rng, years, top_genre)
    _write_csv(
        os.path.join(out_dir, "movies.csv"),
        {"movieId": movie_ids, "title": titles, "genres": genres},
    )
    imdb = rng.choice(np.arange(1, 9_999_999), size=M, replace=False)
    tmdb = rng.choice(np.arange(1, 999_999), size=M, replace=False)
    _write_csv(
        os.path.join(out_dir, "links.csv"),
        {
            "movieId": movie_ids,
            "imdbId": pc.utf8_lpad(pa.array(imdb.astype(str)), 7, "0"),
            "tmdbId": tmdb,
        },
    )
    log.info("movies: %d (%.1fs)", M, time.perf_counter() - t0)

    # Users and what they rate ----------------------------------------------
    centers = rng.standard_normal((spec.clusters, D)) / np.sqrt(D) * 2.0
    logits = np.log(popularity)[None, :] + spec.taste_strength * (centers @ taste.T) * np.sqrt(D)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    cdfs = np.cumsum(probs, axis=1)
    cdfs[:, -1] = 1.0
    del logits, probs
    user_clusters = rng.integers(0, spec.clusters, size=(U, 2))
    user_taste = centers[user_clusters[:, 0]] * 0.7 + centers[user_clusters[:, 1]] * 0.3
    user_taste += rng.standard_normal((U, D)) / np.sqrt(D) * 0.5
    counts = _activity(rng, spec)
    r_user, r_movie = _sample_unique(rng, counts, user_clusters, cdfs, M)
    log.info("sampled %d ratings (%.1fs)", r_user.size, time.perf_counter() - t0)

    # Rating values ----------------------------------------------------------
    user_bias = rng.standard_normal(U) * 0.35
    score = np.einsum("ij,ij->i", user_taste[r_user], taste[r_movie]) * np.sqrt(D) * 0.5
    score += quality[r_movie] * 0.6 + user_bias[r_user] + rng.standard_normal(r_user.size) * 0.6
    cuts = np.quantile(score, np.cumsum(RATING_MIX)[:-1])
    level = np.searchsorted(cuts, score).astype(np.int64)
    del score

    # Timestamps -------------------------------------------------------------
    span_total = LAST_TIMESTAMP - FIRST_TIMESTAMP
    start = FIRST_TIMESTAMP + (rng.random(U) ** 0.8) * span_total
    duration = np.minimum(rng.lognormal(mean=13.0, sigma=2.8, size=U), LAST_TIMESTAMP - start)
    ts = (start[r_user] + rng.random(r_user.size) * duration[r_user]).astype(np.int64)

    level_text = pa.array([f"{v:.1f}" for v in RATING_LEVELS])
    _write_csv(
        os.path.join(out_dir, "ratings.csv"),
        {
            "userId": r_user + 1,
            "movieId": movie_ids[r_movie],
            "rating": level_text.take(pa.array(level)),
            "timestamp": ts,
        },
    )
    log.info("ratings.csv written (%.1fs)", time.perf_counter() - t0)

    # Tags ---------------------------------------------------------------------
    n_tags = spec.tags
    tag_vocab = np.array(sorted({f"{a} {b}" for a in _WORDS[:40] for b in _WORDS[40:]})[:1500] + _WORDS)
    genre_tag_pool = rng.integers(0, tag_vocab.size, size=(len(GENRES), 25))
    taggers = np.flatnonzero(rng.random(U) < 0.04)
    rows = np.flatnonzero(np.isin(r_user, taggers))
    if rows.size == 0:
        rows = np.arange(r_user.size)
    pick = np.sort(rng.choice(rows, size=n_tags, replace=True))
    t_movie = r_movie[pick]
    from_genre = rng.random(n_tags) < 0.7
    tag_idx = np.where(
        from_genre,
        genre_tag_pool[top_genre[t_movie], rng.integers(0, 25, size=n_tags)],
        rng.integers(0, tag_vocab.size, size=n_tags),
    )
    _write_csv(
        os.path.join(out_dir, "tags.csv"),
        {
            "userId": r_user[pick] + 1,
            "movieId": movie_ids[t_movie],
            "tag": tag_vocab[tag_idx],
            "timestamp": ts[pick] + rng.integers(0, 3600, size=n_tags),
        },
    )

    # Genome -------------------------------------------------------------------
    rated = np.bincount(r_movie, minlength=M)
    genome_movies = np.sort(np.argsort(-rated, kind="stable")[: spec.genome_movies])
    tag_dirs = rng.standard_normal((spec.genome_tags, D))
    names = [f"{tag_vocab[i % tag_vocab.size]} {i // tag_vocab.size}".strip() for i in range(spec.genome_tags)]
    _write_csv(
        os.path.join(out_dir, "genome-tags.csv"),
        {"tagId": np.arange(1, spec.genome_tags + 1), "tag": names},
    )
    path = os.path.join(out_dir, "genome-scores.csv")
    for i, chunk in enumerate(np.array_split(genome_movies, max(1, genome_movies.size // 2000))):
        z = (taste[chunk] @ tag_dirs.T) * 2.0 - 2.2
        z += rng.standard_normal(z.shape) * 0.5
        rel = np.round(1.0 / (1.0 + np.exp(-z)), 5)
        _write_csv(path, {
            "movieId": pa.array(np.repeat(movie_ids[chunk], spec.genome_tags)),
            "tagId": pa.array(np.tile(np.arange(1, spec.genome_tags + 1), chunk.size)),
            "relevance": pa.array(rel.ravel()),
        }, append=i > 0)
    log.info("corpus files written (%.1fs)", time.perf_counter() - t0)
    return {
        "users": U,
        "movies": M,
        "ratings": int(r_user.size),
        "tags": int(n_tags),
        "genome_movies": int(genome_movies.size),
        "genome_tags": spec.genome_tags,
    }
