"""Every MovieLens layout of DESIGN §3, from a directory or a zip, into one canonical form."""

from __future__ import annotations

import re
import resource
import signal
import zipfile
from pathlib import Path

import pytest

from recsys import io
from recsys.data.layouts import detect_layout
from recsys.data.errors import InputFileError
from recsys.data.release import open_release
from recsys.features.preprocess import run_preprocess
from tests.conftest import MOVIES_CSV, make_config, ratings_csv, write_release


def _tables(spark, result):
    h = {r["user_id"]: r for r in spark.read.parquet(io.join(result.run_dir, "histories")).collect()}
    m = {r["movie_id"]: r for r in spark.read.parquet(io.join(result.run_dir, "movies")).collect()}
    return h, m


def test_detect_layout_names_what_it_found():
    assert detect_layout(["ratings.csv", "movies.csv"], "x").name == "csv"
    assert detect_layout(["ratings.dat", "movies.dat", "users.dat"], "x").encoding == "ISO-8859-1"
    assert detect_layout(["ratings.dat", "movies.dat", "tags.dat"], "x").encoding == "UTF-8"
    assert detect_layout(["u.data", "u.item"], "x").name == "100k"
    with pytest.raises(InputFileError, match="found a.txt"):
        detect_layout(["a.txt"], "x")


def test_ml1m_dat_latin1(spark, tmp_path):
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama\n"
    src = write_release(tmp_path / "ml-1m", {
        "ratings.dat": "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n",
        "movies.dat": movies.encode("latin-1"),
        "users.dat": "1::F::1::10::48067\n",
    })
    result = run_preprocess(spark, make_config(tmp_path, src, max_reject_fraction=0.0))
    h, m = _tables(spark, result)
    assert m[2]["title"] == "Misérables, Les (1995)"
    assert m[1]["genres"] == ["Animation", "Children's", "Comedy"]
    assert h[1]["movie_ids"] == [1, 2] and h[1]["ratings"] == [5.0, 3.0]
    assert result.manifest["inputs"]["layout"] == "dat-latin1"


def test_ml10m_dat_utf8_with_tags(spark, tmp_path):
    src = write_release(tmp_path / "ml-10M100K", {
        "ratings.dat": "1::122::4.5::838985046\n1::185::5::838983525\n",
        "movies.dat": "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime|Thriller\n",
        "tags.dat": "15::122::excellent!::1215184630\n16::122::Excellent! ::1215184631\n",
    })
    result = run_preprocess(spark, make_config(tmp_path, src, max_reject_fraction=0.0))
    h, m = _tables(spark, result)
    assert h[1]["ratings"] == [5.0, 4.5]
    assert m[185]["title"] == "Net, The (1995)"
    assert m[122]["tags"] == ["excellent!"]  # lower-cased and trimmed: one tag, applied twice


def test_ml100k(spark, tmp_path):
    flags_toy = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
    flags_gold = "0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0"
    src = write_release(tmp_path / "ml-100k", {
        "u.data": "196\t1\t3\t881250949\n196\t2\t5\t881250950\n186\t2\t4\t891717742\n",
        "u.item": (
            f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy|{flags_toy}\n"
            f"2|GoldenEye (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Gold|{flags_gold}\n"
        ).encode("latin-1"),
    })
    result = run_preprocess(spark, make_config(tmp_path, src, max_reject_fraction=0.0))
    h, m = _tables(spark, result)
    assert m[1]["genres"] == ["Animation", "Children's", "Comedy"]
    assert m[2]["genres"] == ["Action", "Adventure", "Thriller"]
    assert m[2]["year"] == 1995
    assert h[196]["movie_ids"] == [1, 2]
    assert result.manifest["counts"]["ratings"] == 3


def test_csv_with_genome(spark, tmp_path):
    scores = "movieId,tagId,relevance\r\n" + "".join(
        f"{m},{t},{0.1 * t + (0.5 if m == 2 else 0):.5f}\r\n" for m in (1, 2) for t in (1, 2, 3)
    ) + "3,1,0.5\r\n" + "2,3,high\r\n" + "2,3,1.5\r\n" + "99,1,0.25\r\n"
    src = write_release(tmp_path / "ml-25m", {
        "ratings.csv": ratings_csv("1,1,4.0,10", "1,2,3.5,11", "2,3,5.0,12"),
        "movies.csv": MOVIES_CSV,
        "genome-scores.csv": scores,
        "genome-tags.csv": "tagId,tag\r\n1,007\r\n2,\"funny, very\"\r\n3,dark\r\n",
        "tags.csv": "userId,movieId,tag,timestamp\r\n1,1,\"pixar, animation\",15\r\n",
        "links.csv": "movieId,imdbId,tmdbId\r\n1,0114709,862\r\n2,0113497,\r\n",
    })
    result = run_preprocess(spark, make_config(tmp_path, src, max_reject_fraction=0.5))
    _, m = _tables(spark, result)
    rejects = {tuple(r) for r in spark.read.parquet(io.join(result.run_dir, "rejects")).collect()}
    assert rejects == {("genome-scores.csv", "bad_relevance", "2,3,high"),
                       ("genome-scores.csv", "bad_relevance", "2,3,1.5"),
                       ("genome-scores.csv", "unknown_movie", "99,1,0.25")}
    assert result.manifest["counts"]["rows_by_reason"]["genome_scores"] == {
        "valid": 7, "bad_relevance": 2, "unknown_movie": 1}
    assert m[1]["genome"] == pytest.approx([0.1, 0.2, 0.3])
    assert m[2]["genome"] == pytest.approx([0.6, 0.7, 0.8])
    assert m[3]["genome"] is None  # scored on 1 of 3 tags only: no partial vector
    assert m[1]["tags"] == ["pixar, animation"]
    assert m[2]["tmdb_id"] is None and m[2]["imdb_id"] == "0113497"
    assert result.manifest["counts"]["rows_by_reason"]["genome_tags"] == {"valid": 3}


def test_release_zip_is_extracted_once(spark, tmp_path):
    src = write_release(tmp_path / "ml-latest-small", {
        "ratings.csv": ratings_csv("1,1,4.0,10", "1,2,3.5,11"),
        "movies.csv": MOVIES_CSV,
        "README.txt": "x",
    })
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-latest-small/", "")
        for f in src.iterdir():
            zf.write(f, f"ml-latest-small/{f.name}")
    config = make_config(tmp_path, archive, max_reject_fraction=0.0)
    result = run_preprocess(spark, config)
    assert result.manifest["counts"]["ratings"] == 2
    release = open_release(str(archive), work_uri=config.artifact_root)
    assert "/_inputs/ml-latest-small-" in release.directory
    marker = io.join(release.directory, "_EXTRACTED")
    checksum, taken = io.read_text(marker).split()
    ratings = Path(io.local_path(release.directory)) / "ratings.csv"
    written = ratings.stat().st_mtime_ns, ratings.stat().st_ino
    again = open_release(str(archive), work_uri=config.artifact_root)
    assert again.directory == release.directory  # not extracted again
    assert (ratings.stat().st_mtime_ns, ratings.stat().st_ino) == written
    # the marker says when a run last took it (retention keeps what runs take)
    assert io.read_text(marker).split()[0] == checksum and io.read_text(marker).split()[1] >= taken
    assert re.fullmatch(r"\d{8}T\d{6}Z", taken)


def test_bad_zip(tmp_path):
    bad = tmp_path / "ml-25m.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="is not a valid zip file"):
        open_release(str(bad), work_uri=str(tmp_path / "art"))


def test_a_damaged_member_of_a_zip_is_said_clearly(tmp_path):
    archive = tmp_path / "ml-latest-small.zip"
    ratings = ratings_csv(*[f"{u},{m},4.0,{u * 100 + m}" for u in range(1, 60) for m in (1, 2, 3)])
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-latest-small/movies.csv", MOVIES_CSV)
        zf.writestr("ml-latest-small/ratings.csv", ratings)
        member = zf.getinfo("ml-latest-small/ratings.csv")
    data = bytearray(archive.read_bytes())
    middle = member.header_offset + 30 + len(member.filename) + member.compress_size // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    archive.write_bytes(bytes(data))  # still a zip: only the member's bytes are damaged
    with pytest.raises(InputFileError, match=r"ml-latest-small.zip: cannot extract "
                                             r"ml-latest-small/ratings.csv \(.*\); the archive "
                                             r"is damaged: download the release again"):
        open_release(str(archive), work_uri=str(tmp_path / "art"))
    assert not list((tmp_path / "art").rglob("_EXTRACTED"))


def test_a_zip_that_cannot_be_written_out_is_said_clearly(tmp_path):
    # A real write failure: the process may not write files over 64 KiB (EFBIG, what
    # a full disk's ENOSPC also is to the extraction: an OSError on write).
    archive = tmp_path / "ml-latest-small.zip"
    ratings = ratings_csv(*[f"{u},{m},4.0,{u * 100 + m}" for u in range(1, 2000) for m in (1, 2)])
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-latest-small/movies.csv", MOVIES_CSV)
        zf.writestr("ml-latest-small/ratings.csv", ratings)
    assert len(ratings) > 64 << 10
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        with pytest.raises(InputFileError, match=r"ml-latest-small.zip: cannot write "
                                                 r"ml-latest-small/ratings.csv to the temporary "
                                                 r"directory .*\(File too large\); free space"):
            open_release(str(archive), work_uri=str(tmp_path / "art"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not list((tmp_path / "art").rglob("_EXTRACTED"))
    assert open_release(str(archive), work_uri=str(tmp_path / "art")).file("ratings")
