"""The synthetic corpus: ml-25m layout and shape, deterministic, and learnable."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.layouts import GENRES, NO_GENRES
from recsys.data.synthetic import FIRST_TIMESTAMP, LAST_TIMESTAMP, RATING_MIX, SyntheticSpec, generate
from tests.filesystems import run_on_small_fs

REPO = Path(__file__).resolve().parents[2]
SPEC = SyntheticSpec(users=400, movies=2000, ratings=40_000, seed=3, genome_movies=50)
FILES = ("ratings.csv", "movies.csv", "tags.csv", "links.csv", "genome-scores.csv", "genome-tags.csv")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    counts = generate(SPEC, str(out))
    return out, counts


def _digest(directory: Path) -> dict[str, str]:
    return {f: hashlib.md5((directory / f).read_bytes()).hexdigest() for f in FILES}


def test_layout_and_headers(corpus):
    out, counts = corpus
    heads = {f: (out / f).read_bytes().split(b"\r\n", 1)[0].decode() for f in FILES}
    assert heads == {
        "ratings.csv": "userId,movieId,rating,timestamp",
        "movies.csv": "movieId,title,genres",
        "tags.csv": "userId,movieId,tag,timestamp",
        "links.csv": "movieId,imdbId,tmdbId",
        "genome-scores.csv": "movieId,tagId,relevance",
        "genome-tags.csv": "tagId,tag",
    }
    raw = (out / "ratings.csv").read_bytes()
    assert raw.count(b"\r\n") == 40_001 and raw.count(b"\n") == 40_001  # CRLF everywhere
    assert counts["ratings"] == 40_000


def test_ratings_properties(corpus):
    out, _ = corpus
    r = pd.read_csv(out / "ratings.csv")
    movies = pd.read_csv(out / "movies.csv")
    assert len(r) == 40_000 and r.userId.nunique() == 400
    assert r.groupby("userId").size().min() >= 20
    assert not r.duplicated(["userId", "movieId"]).any()
    assert set(r.rating.unique()) <= {x / 2 for x in range(1, 11)}
    mix = r.rating.value_counts(normalize=True).sort_index().to_numpy()
    assert np.abs(mix - RATING_MIX).max() < 0.01
    assert r.timestamp.between(FIRST_TIMESTAMP, LAST_TIMESTAMP).all()
    assert set(r.movieId) <= set(movies.movieId)
    # heavy tails: the most active user and the most rated movie far above the median
    per_user = r.groupby("userId").size()
    per_movie = r.groupby("movieId").size()
    assert per_user.max() > 5 * per_user.median()
    assert per_movie.max() > 8 * per_movie.median()
    assert list(r.userId) == sorted(r.userId)  # sorted by user like the official files


def test_movies_and_genome(corpus):
    out, _ = corpus
    movies = pd.read_csv(out / "movies.csv")
    assert movies.movieId.is_unique and movies.movieId.is_monotonic_increasing
    genres = {g for gs in movies.genres for g in gs.split("|")}
    assert genres <= set(GENRES) | {NO_GENRES}
    assert movies.title.str.match(r".+ \((19|20)\d\d\)$").all()
    assert movies.title.str.contains(",").any()  # quoted titles are exercised
    scores = pd.read_csv(out / "genome-scores.csv")
    assert scores.groupby("movieId").size().eq(1128).all() and scores.movieId.nunique() == 50
    assert scores.relevance.between(0, 1).all()
    tags = pd.read_csv(out / "tags.csv")
    assert len(tags) == round(1_093_360 * 40_000 / 25_000_095)


def test_the_corpus_directory_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        generate(SyntheticSpec(users=100, movies=50, ratings=2400, seed=1), str(tmp_path / "c"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o755  # readable by all


def test_deterministic_per_seed(corpus, tmp_path):
    out, _ = corpus
    generate(SPEC, str(tmp_path / "again"))
    assert _digest(tmp_path / "again") == _digest(out)
    other = SyntheticSpec(**{**SPEC.__dict__, "seed": 4})
    generate(other, str(tmp_path / "other"))
    assert _digest(tmp_path / "other")["ratings.csv"] != _digest(out)["ratings.csv"]


def test_tastes_are_learnable(corpus):
    """A linear item-item model (EASE, Steck 2019) fitted on 80% of the ratings finds
    the held-out 20% far better than most-popular: there are tastes to learn."""
    out, _ = corpus
    r = pd.read_csv(out / "ratings.csv")
    users = r.userId.to_numpy() - 1
    items = pd.factorize(r.movieId)[0]
    test = np.random.default_rng(0).random(len(r)) < 0.2
    n_u, n_i = users.max() + 1, items.max() + 1
    X = np.zeros((n_u, n_i))
    X[users[~test], items[~test]] = 1
    T = np.zeros((n_u, n_i))
    T[users[test], items[test]] = 1

    def recall_at_10(scores):
        top = np.argsort(-np.where(X > 0, -np.inf, scores), axis=1)[:, :10]
        hits = np.take_along_axis(T, top, axis=1).sum()
        return hits / np.minimum(10, T.sum(axis=1)).sum()

    P = np.linalg.inv(X.T @ X + 50.0 * np.eye(n_i))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    ease = recall_at_10(X @ B)
    pop = recall_at_10(np.broadcast_to(X.sum(axis=0), X.shape).astype(float))
    assert ease > 2 * pop, (ease, pop)


@pytest.mark.parametrize("args, message", [
    (["--users", "100", "--movies", "100", "--ratings", "100"],
     "100 ratings cannot give each of 100 users >= 20 ratings"),
    (["--users", "10", "--movies", "100", "--ratings", "1000"],
     "1000 ratings exceed what 10 users can rate"),
    (["--users", "10", "--movies", "39", "--ratings", "200"], "need at least 1 user and 40 movies"),
    (["--users", "10", "--movies", "100", "--ratings", "200", "--seed", "-1"],
     "the seed must be an integer in 0 .. 2**32 - 1, got -1"),
])
def test_job_rejects_impossible_settings_before_writing(tmp_path, args, message):
    out = tmp_path / "corpus"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs/make_synthetic_corpus.py"), "--out", str(out), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"make_synthetic_corpus: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_the_job_never_writes_over_files_it_did_not_write(corpus, tmp_path):
    out, _ = corpus
    assert (out / "README.txt").read_text().startswith("Synthetic MovieLens-format corpus")
    job = [sys.executable, str(REPO / "jobs/make_synthetic_corpus.py"), "--users", "100",
           "--movies", "50", "--ratings", "2400", "--out"]
    release = tmp_path / "ml-latest-small"
    release.mkdir()
    (release / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    (tmp_path / "a-file").write_text("")
    for where, said in ((release, "holds files this command did not write (ratings.csv"),
                        (tmp_path / "a-file", "is a file, not a directory"),
                        (tmp_path / "a-file" / "x", "cannot write the corpus to --out")):
        proc = subprocess.run([*job, str(where)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "make_synthetic_corpus: configuration error: " in proc.stderr and said in proc.stderr
        assert "Traceback" not in proc.stderr
    assert (release / "ratings.csv").read_text().endswith("1,1,4.0,1\n")  # untouched
    again = tmp_path / "again"
    for _ in range(2):  # a corpus it wrote is written again
        proc = subprocess.run([*job, str(again)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


def test_a_full_disk_leaves_no_corpus_cut_short_and_keeps_the_earlier_one(tmp_path):
    """The files used to be written in place: a full disk (or a kill) left a corpus with
    its README, a cut ratings.csv and no tags or genome, which preprocess reads as a
    smaller corpus (the cut line one reject among thousands). Now the earlier corpus stays
    whole, and nothing else is left; a run killed before left its staging directory,
    which this run removes."""
    fs = tmp_path / "fs"
    job = f"{sys.executable} {REPO / 'jobs/make_synthetic_corpus.py'} --out c"
    prepare = (f"{job} --users 100 --movies 50 --ratings 2400 > /dev/null 2>&1 && "
               "mkdir .c.partial-999999999-x && md5sum c/* > ../before.md5")
    bigger = (f"{job} --users 2000 --movies 500 --ratings 100000; rc=$?; "
              "md5sum c/* > ../after.md5; exit $rc")
    done = run_on_small_fs(["sh", "-c", bigger], fs, "400k", prepare=prepare)
    assert done.returncode == 4, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(
        "make_synthetic_corpus: artifact storage error: no space left on device writing the "
        f"corpus in {fs}/.c.partial-")
    assert sorted(done.left) == sorted(str(fs / "c" / f) for f in ("README.txt", *FILES))
    before = (tmp_path / "before.md5").read_text()
    assert len(before.splitlines()) == 7 and (tmp_path / "after.md5").read_text() == before


def test_a_disk_full_before_the_corpus_starts_leaves_no_staging_directory(tmp_path):
    """Its staging directory was made, then its README could not be written: the error
    named no place and the empty staging directory stayed."""
    fs = tmp_path / "fs"
    fill = "dd if=/dev/zero of=fill bs=1k count=200 2>/dev/null; true"
    job = (f"{sys.executable} {REPO / 'jobs/make_synthetic_corpus.py'} --out c --users 100 "
           "--movies 50 --ratings 2400; rc=$?; ls -A > ../after.txt; exit $rc")
    done = run_on_small_fs(["sh", "-c", job], fs, "100k", prepare=fill)
    assert done.returncode == 4, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("make_synthetic_corpus: artifact storage error: no space left on "
                           f"device writing the corpus in {fs}/.c.partial-"), line
    assert line.endswith(", beside --out c: free space there (or give the job a place with "
                         "room) and run it again"), line
    assert (tmp_path / "after.txt").read_text().split() == ["fill"]
