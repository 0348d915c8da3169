"""The MovieLens release layouts (DESIGN §3) and how to recognise them.

* ``csv``  — ml-25m, ml-20m, ml-latest, ml-latest-small: headed CSV files, UTF-8.
* ``dat``  — ml-1m (Latin-1) and ml-10m (UTF-8): ``::``-separated, no header.
* ``100k`` — ml-100k: ``u.data`` (tab-separated), ``u.item`` (``|``-separated, Latin-1).
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.data.errors import InputFileError


@dataclass(frozen=True)
class TableSpec:
    #: Canonical table name: ratings, movies, tags, links, genome_scores, genome_tags.
    name: str
    filename: str
    #: Column names in file order (the expected header for headed layouts).
    columns: tuple[str, ...]
    required: bool
    has_header: bool
    sep: str
    #: Quote character, or "" for none.
    quote: str = '"'


@dataclass(frozen=True)
class Layout:
    name: str
    encoding: str
    tables: tuple[TableSpec, ...]

    def table(self, name: str) -> TableSpec | None:
        for spec in self.tables:
            if spec.name == name:
                return spec
        return None


_CSV_TABLES = (
    TableSpec("ratings", "ratings.csv", ("userId", "movieId", "rating", "timestamp"), True, True, ","),
    TableSpec("movies", "movies.csv", ("movieId", "title", "genres"), True, True, ","),
    TableSpec("tags", "tags.csv", ("userId", "movieId", "tag", "timestamp"), False, True, ","),
    TableSpec("links", "links.csv", ("movieId", "imdbId", "tmdbId"), False, True, ","),
    TableSpec("genome_scores", "genome-scores.csv", ("movieId", "tagId", "relevance"), False, True, ","),
    TableSpec("genome_tags", "genome-tags.csv", ("tagId", "tag"), False, True, ","),
)

_DAT_TABLES = (
    TableSpec("ratings", "ratings.dat", ("userId", "movieId", "rating", "timestamp"), True, False, "::", ""),
    TableSpec("movies", "movies.dat", ("movieId", "title", "genres"), True, False, "::", ""),
    TableSpec("tags", "tags.dat", ("userId", "movieId", "tag", "timestamp"), False, False, "::", ""),
)

#: ml-100k's 19 genre flags, in u.item column order (as listed in its u.genre).
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

_100K_TABLES = (
    TableSpec("ratings", "u.data", ("userId", "movieId", "rating", "timestamp"), True, False, "\t", ""),
    TableSpec(
        "movies",
        "u.item",
        ("movieId", "title", "releaseDate", "videoReleaseDate", "imdbUrl")
        + tuple(f"g{i}" for i in range(len(GENRES_100K))),
        True,
        False,
        "|",
        "",
    ),
)

LAYOUTS = {
    "csv": Layout("csv", "UTF-8", _CSV_TABLES),
    "dat": Layout("dat", "UTF-8", _DAT_TABLES),
    "dat-latin1": Layout("dat-latin1", "ISO-8859-1", _DAT_TABLES),
    "100k": Layout("100k", "ISO-8859-1", _100K_TABLES),
}

#: The genre vocabulary of the CSV releases (ml-20m and later).
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRES = "(no genres listed)"


def detect_layout(filenames: list[str], where: str) -> Layout:
    """Pick the layout from the file names present in a release directory."""
    names = set(filenames)
    if "ratings.csv" in names:
        return LAYOUTS["csv"]
    if "ratings.dat" in names:
        # ml-1m ships users.dat and is Latin-1; ml-10m has tags.dat and is UTF-8.
        return LAYOUTS["dat-latin1"] if "users.dat" in names else LAYOUTS["dat"]
    if "u.data" in names:
        return LAYOUTS["100k"]
    found = ", ".join(sorted(names)[:20]) or "nothing"
    raise InputFileError(
        f"{where} is not a MovieLens release: expected ratings.csv (ml-25m/20m/latest), "
        f"ratings.dat (ml-1m/10m) or u.data (ml-100k); found {found}"
    )


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise InputFileError(
            f"unknown layout {name!r}; choose one of: auto, {', '.join(LAYOUTS)}"
        ) from None
