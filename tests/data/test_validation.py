"""Bad input (DESIGN §3): every case is quarantined with its reason and counted in the
manifest, or fails the run with a clear message."""

from __future__ import annotations

import dataclasses
import time

import pytest

from recsys import artifacts, io
from recsys.data.errors import HeaderError, InputFileError, RejectThresholdError, ShrunkInputError
from recsys.data.release import check_input
from recsys.features.preprocess import run_preprocess
from tests.conftest import MOVIES_CSV, REPO, make_config, ratings_csv, write_release

GOOD = [f"1,{m},4.0,{1_000_000 + m}" for m in (1, 2, 3)] + ["2,1,3.5,1000005", "2,4,0.5,1000006"]


def _rejects(spark, result):
    return {
        (r["source"], r["reason"], r["record"])
        for r in spark.read.parquet(io.join(result.run_dir, "rejects")).collect()
    }


def _run(spark, tmp_path, ratings: str, movies: str = MOVIES_CSV, **data):
    src = write_release(tmp_path / "release", {"ratings.csv": ratings, "movies.csv": movies})
    data.setdefault("max_reject_fraction", 1.0)
    return run_preprocess(spark, make_config(tmp_path, src, **data))


BAD_ROWS = [
    ("3,1,4.0", "wrong_field_count"),
    ("3,2,4.0,1000,extra", "wrong_field_count"),
    ("x3,1,4.0,1000", "bad_user_id"),
    ("99999999999,1,4.0,1000", "bad_user_id"),
    ("3,one,4.0,1000", "bad_movie_id"),
    ("3,1,4.0.1,1000", "bad_rating"),
    ("3,1,good,1000", "bad_rating"),
    ("3,1,-2,1000", "rating_out_of_range"),
    ("3,1,5.5,1000", "rating_out_of_range"),
    ("3,1,0.0,1000", "rating_out_of_range"),
    ("3,1,3.25,1000", "rating_not_half_star"),
    ("3,1,4.0,2019-01-01", "bad_timestamp"),
    ("3,1,4.0,1000.5", "bad_timestamp"),
    ("3,2,4.0,-5", "timestamp_out_of_range"),
    ("3,3,4.0,1574300000000", "timestamp_out_of_range"),  # milliseconds
    ("3,99,4.0,1000", "unknown_movie"),
]


def test_every_bad_rating_row_is_quarantined_with_its_reason(spark, tmp_path):
    result = _run(spark, tmp_path, ratings_csv(*GOOD, *[row for row, _ in BAD_ROWS]))
    assert _rejects(spark, result) == {("ratings.csv", reason, row) for row, reason in BAD_ROWS}
    expected = {"valid": len(GOOD)}
    for _, reason in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    counts = result.manifest["counts"]
    assert counts["rows_by_reason"]["ratings"] == expected
    assert counts["rejected"]["ratings"] == len(BAD_ROWS)
    assert counts["ratings"] == len(GOOD)
    # the manifest on disk says the same, and the histories hold the valid rows only
    on_disk = artifacts.read_manifest(result.run_dir)
    assert on_disk["counts"]["rows_by_reason"]["ratings"] == expected
    users = spark.read.parquet(io.join(result.run_dir, "histories")).select("user_id").collect()
    assert sorted(r[0] for r in users) == [1, 2]


def test_duplicate_pair_keeps_latest(spark, tmp_path):
    result = _run(spark, tmp_path, ratings_csv(*GOOD, "1,2,1.0,999", "1,2,2.0,2000000"))
    rejects = _rejects(spark, result)
    assert ("ratings.csv", "duplicate_pair", "1,2,1.0,999") in rejects
    assert ("ratings.csv", "duplicate_pair", "1,2,4.0,1000002") in rejects
    h = spark.read.parquet(io.join(result.run_dir, "histories")).where("user_id = 1").first()
    assert h["movie_ids"] == [1, 3, 2]
    assert h["ratings"][2] == 2.0
    assert result.manifest["counts"]["rows_by_reason"]["ratings"]["duplicate_pair"] == 2
    movie = spark.read.parquet(io.join(result.run_dir, "movies")).where("movie_id = 2").first()
    assert (movie["num_ratings"], movie["mean_rating"]) == (1, 2.0)  # duplicates not counted


def test_invalid_row_does_not_shadow_valid_duplicate(spark, tmp_path):
    # a later but invalid rating of the same pair must not turn the valid one into a duplicate
    result = _run(spark, tmp_path, ratings_csv(*GOOD, "1,1,9.0,5000000"))
    reasons = {r[1] for r in _rejects(spark, result)}
    assert reasons == {"rating_out_of_range"}


def test_bad_movie_rows(spark, tmp_path):
    movies = MOVIES_CSV + "five,Bad Id (2000),Drama\r\n" + "2,Jumanji again (1995),Drama\r\n" + "6,,Drama\r\n"
    result = _run(spark, tmp_path, ratings_csv(*GOOD), movies=movies)
    rejects = _rejects(spark, result)
    assert ("movies.csv", "bad_movie_id", "five,Bad Id (2000),Drama") in rejects
    assert ("movies.csv", "duplicate_movie_id", "2,Jumanji again (1995),Drama") in rejects
    assert ("movies.csv", "missing_title", "6,,Drama") in rejects
    table = spark.read.parquet(io.join(result.run_dir, "movies"))
    assert table.where("movie_id = 2").first()["title"] == "Jumanji (1995)"
    assert table.count() == 4
    assert table.where("movie_id = 4").first()["year"] is None


def test_text_not_valid_in_the_files_encoding_is_quarantined(spark, tmp_path):
    # a Latin-1 byte in a UTF-8 file: the title would be read with U+FFFD in it
    movies = MOVIES_CSV.encode() + b"5,Am\xe9lie (2001),Comedy|Romance\r\n"
    tags = b"userId,movieId,tag,timestamp\r\n1,1,caf\xe9,1000\r\n1,2,funny,1001\r\n"
    src = write_release(tmp_path / "release", {
        "ratings.csv": ratings_csv(*GOOD, "2,5,4.0,1000007"), "movies.csv": movies, "tags.csv": tags})
    result = run_preprocess(spark, make_config(tmp_path, src, max_reject_fraction=1.0))
    assert _rejects(spark, result) == {
        ("movies.csv", "bad_encoding", "5,Am\ufffdlie (2001),Comedy|Romance"),
        ("tags.csv", "bad_encoding", "1,1,caf\ufffd,1000"),
        ("ratings.csv", "unknown_movie", "2,5,4.0,1000007"),
    }
    titles = spark.read.parquet(io.join(result.run_dir, "movies")).select("title").collect()
    assert not any("\ufffd" in r[0] for r in titles)


def test_a_release_in_another_encoding_fails_the_run_and_says_which_setting(spark, tmp_path):
    accented = "".join(f"{m},Caf\u00e9 num\u00e9ro {m} (2001),Drama\r\n" for m in range(5, 25))
    movies = (MOVIES_CSV + accented).encode("latin-1")
    with pytest.raises(RejectThresholdError, match=r"movies.csv: 20 of 24 rows rejected .*"
                       r"bad_encoding=20.*not valid UTF-8.*set data.encoding"):
        _run(spark, tmp_path, ratings_csv(*GOOD), movies=movies, max_reject_fraction=0.001)
    # read in its own encoding, the same file is clean
    result = _run(spark, tmp_path / "again", ratings_csv(*GOOD), movies=movies,
                  encoding="ISO-8859-1", max_reject_fraction=0.0)
    titles = spark.read.parquet(io.join(result.run_dir, "movies")).where("movie_id = 5")
    assert titles.first()["title"] == "Caf\u00e9 num\u00e9ro 5 (2001)"


def test_bom_and_crlf_are_read(spark, tmp_path):
    ratings = "\ufeff" + ratings_csv(*GOOD)
    assert "\r\n" in ratings
    result = _run(spark, tmp_path, ratings, movies="\ufeff" + MOVIES_CSV, max_reject_fraction=0.0)
    assert result.manifest["counts"]["ratings"] == len(GOOD)
    assert result.manifest["counts"]["movies"] == 4
    h = spark.read.parquet(io.join(result.run_dir, "histories")).orderBy("user_id").collect()
    assert [r["user_id"] for r in h] == [1, 2]


def test_lf_only_files_are_read_too(spark, tmp_path):
    result = _run(spark, tmp_path, ratings_csv(*GOOD).replace("\r\n", "\n"),
                  movies=MOVIES_CSV.replace("\r\n", "\n"), max_reject_fraction=0.0)
    assert result.manifest["counts"]["ratings"] == len(GOOD)


def test_timestamps_in_milliseconds_fail_the_run_by_their_reason(spark, tmp_path):
    # a whole file exported in milliseconds: every row is from the future, none is taken
    in_ms = [f"{u},{m},4.0,{1_500_000_000 + i}000"
             for i, (u, m) in enumerate(((1, 1), (1, 2), (1, 3), (2, 1), (2, 4)))]
    with pytest.raises(RejectThresholdError, match="timestamp_out_of_range=5"):
        _run(spark, tmp_path, ratings_csv(*in_ms), max_reject_fraction=0.001)


def test_the_latest_possible_timestamp_is_the_runs_start_plus_a_day(spark, tmp_path):
    before = int(time.time())
    tomorrow, in_two_days = before + 80_000, before + 2 * 86_400
    tags = ("userId,movieId,tag,timestamp\r\n"
            f"1,1,fun,{tomorrow}\r\n1,2,old,-1\r\n1,3,later,{in_two_days}\r\n")
    src = write_release(tmp_path / "release", {"ratings.csv": ratings_csv(
        *GOOD, f"3,1,4.0,{tomorrow}", f"3,2,4.0,{in_two_days}"),
        "movies.csv": MOVIES_CSV, "tags.csv": tags})
    result = run_preprocess(spark, make_config(tmp_path, src, max_reject_fraction=1.0))
    latest = result.manifest["inputs"]["latest_timestamp"]
    assert before + 86_400 <= latest <= int(time.time()) + 86_400
    assert _rejects(spark, result) == {
        ("ratings.csv", "timestamp_out_of_range", f"3,2,4.0,{in_two_days}"),
        ("tags.csv", "timestamp_out_of_range", "1,2,old,-1"),
        ("tags.csv", "timestamp_out_of_range", f"1,3,later,{in_two_days}"),
    }
    h = spark.read.parquet(io.join(result.run_dir, "histories")).where("user_id = 3").first()
    assert h["timestamps"] == [tomorrow]


def test_reject_threshold_fails_the_run_and_keeps_rejects(spark, tmp_path):
    with pytest.raises(RejectThresholdError, match=r"ratings.csv: 1 of 6 rows rejected") as err:
        _run(spark, tmp_path, ratings_csv(*GOOD, "3,1,7.0,1000"), max_reject_fraction=0.1)
    assert "rating_out_of_range=1" in str(err.value)
    root = io.normalize_uri(tmp_path / "artifacts")
    with pytest.raises(artifacts.ArtifactError, match="no completed 'preprocess' run"):
        artifacts.resolve(root, "preprocess")
    (run_id,) = [n for n in io.list_dir(io.join(root, "preprocess"))]
    run_dir = io.join(root, "preprocess", run_id)
    manifest = artifacts.read_manifest(run_dir)
    assert manifest["status"] == "failed" and "RejectThresholdError" in manifest["error"]
    assert spark.read.parquet(io.join(run_dir, "rejects")).count() == 1


def test_under_threshold_passes(spark, tmp_path):
    result = _run(spark, tmp_path, ratings_csv(*GOOD, "3,1,7.0,1000"), max_reject_fraction=0.2)
    assert result.manifest["counts"]["rejected"]["ratings"] == 1


def test_a_release_far_smaller_than_the_latest_run_fails_and_the_latest_stays(spark, tmp_path):
    """Ratings accumulate: a release with far fewer users or ratings than the latest run
    was cut short upstream, and its night would drop the users it lost."""
    root = io.normalize_uri(tmp_path / "artifacts")
    users = [f"{u},{m},4.0,{1_000_000 + 10 * u + m}" for u in range(1, 11) for m in (1, 2, 3)]
    first = _run(spark, tmp_path, ratings_csv(*users))
    assert first.manifest["counts"]["users"] == 10
    message = (r"has 7 users against 10 \(30.0% fewer\) and 21 ratings against 30 \(30.0% "
               r"fewer\) in the latest preprocess run " + first.manifest["run_id"]
               + r" .*more than preprocess.max_shrink = 0.2 below it.*"
               r"--set preprocess.max_shrink=1 once")
    with pytest.raises(ShrunkInputError, match=message):
        _run(spark, tmp_path, ratings_csv(*users[:21]))  # the export cut after user 7
    assert artifacts.resolve(root, "preprocess") == first.run_dir
    failed = [r for r in io.list_dir(io.join(root, "preprocess"))
              if r not in ("LATEST", first.manifest["run_id"])]
    assert artifacts.read_manifest(io.join(root, "preprocess", *failed))["status"] == "failed"

    fewer = _run(spark, tmp_path, ratings_csv(*users[:27]))  # 10% fewer: within the share
    assert artifacts.resolve(root, "preprocess") == fewer.run_dir
    config = make_config(tmp_path, tmp_path / "release")  # the release of the run above
    write_release(tmp_path / "release", {"ratings.csv": ratings_csv(*users[:6])})
    accepted = run_preprocess(spark, config.replace(
        preprocess=dataclasses.replace(config.preprocess, max_shrink=1.0)))
    assert accepted.manifest["counts"]["users"] == 2


def test_missing_required_file(spark, tmp_path):
    src = write_release(tmp_path / "release", {"ratings.csv": ratings_csv(*GOOD)})
    with pytest.raises(InputFileError, match="required file movies.csv is missing"):
        run_preprocess(spark, make_config(tmp_path, src))


def test_empty_file(spark, tmp_path):
    with pytest.raises(InputFileError, match=r"ratings.csv is empty \(0 bytes\)"):
        _run(spark, tmp_path, "")


def test_header_only_file_has_no_ratings(spark, tmp_path):
    with pytest.raises(InputFileError, match="ratings.csv has no data rows"):
        _run(spark, tmp_path, ratings_csv())


def test_wrong_header(spark, tmp_path):
    bad = ratings_csv(*GOOD, header="userId,movieId,score,timestamp")
    with pytest.raises(HeaderError, match="ratings.csv: wrong header 'userId,movieId,score,timestamp', expected 'userId,movieId,rating,timestamp'"):
        _run(spark, tmp_path, bad)


def test_not_a_release(spark, tmp_path):
    src = write_release(tmp_path / "release", {"notes.txt": "hello"})
    with pytest.raises(InputFileError, match="is not a MovieLens release"):
        run_preprocess(spark, make_config(tmp_path, src))


def test_missing_input(spark, tmp_path):
    with pytest.raises(InputFileError, match="input not found"):
        run_preprocess(spark, make_config(tmp_path, tmp_path / "nowhere"))


def test_a_relative_input_not_found_says_where_it_looked_and_where_the_project_copy_is(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputFileError) as err:
        check_input("data/ml-latest-small")
    assert str(err.value) == (
        "input not found: data/ml-latest-small (give a MovieLens release directory or its "
        f".zip); a relative path is read from the current directory, {tmp_path}; the "
        f"project's copy is {REPO / 'data/ml-latest-small'}")
    with pytest.raises(InputFileError, match=r"input not found: nowhere\.zip \(give .*"
                                             f"current directory, {tmp_path}$"):
        check_input("nowhere.zip")  # no copy in the project: said so by not naming one
    with pytest.raises(InputFileError, match=f"input not found: {tmp_path}/none \\(give "
                                             r"a MovieLens release directory or its \.zip\)$"):
        check_input(str(tmp_path / "none"))  # absolute: nothing to add
    assert check_input(str(REPO / "data/ml-latest-small")) == \
        f"file://{REPO / 'data/ml-latest-small'}"


def test_a_file_of_the_release_as_input_says_to_give_its_directory(spark, tmp_path):
    src = write_release(tmp_path / "release", {"ratings.csv": ratings_csv("1,1,4.0,10")})
    with pytest.raises(InputFileError, match="input is a file, not a release: .*ratings.csv "
                                             r"\(give the directory .*release, or"):
        run_preprocess(spark, make_config(tmp_path, src / "ratings.csv"))
