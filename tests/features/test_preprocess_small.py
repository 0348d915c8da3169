"""Preprocessing the embedded ml-latest-small release: exact, known figures."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from recsys import artifacts, io
from recsys.features.preprocess import run_preprocess
from tests.conftest import SMALL


def test_exact_counts(spark, small_run):
    _, result = small_run
    histories = spark.read.parquet(io.join(result.run_dir, "histories"))
    movies = spark.read.parquet(io.join(result.run_dir, "movies"))
    assert histories.count() == 610
    assert histories.agg(F.sum("num_ratings")).first()[0] == 100_836
    assert histories.agg(F.sum(F.size("movie_ids"))).first()[0] == 100_836
    assert movies.count() == 9_742
    assert movies.where("num_ratings > 0").count() == 9_724
    counts = result.manifest["counts"]
    assert (counts["users"], counts["ratings"], counts["movies"]) == (610, 100_836, 9_742)
    assert counts["rejected"] == {"ratings": 0, "movies": 0, "tags": 0, "links": 0}
    assert histories.agg(F.min("num_ratings")).first()[0] >= 20


def test_histories_sorted_by_time_without_duplicates(spark, small_run):
    _, result = small_run
    h = spark.read.parquet(io.join(result.run_dir, "histories"))
    bad_order = h.where(F.col("timestamps") != F.array_sort("timestamps")).count()
    dup = h.where(F.size(F.array_distinct("movie_ids")) != F.size("movie_ids")).count()
    lengths = h.where(
        (F.size("ratings") != F.size("movie_ids")) | (F.size("timestamps") != F.size("movie_ids"))
    ).count()
    assert (bad_order, dup, lengths) == (0, 0, 0)
    # user 1's first rating by time in the raw file: movie 804 at 964980499? check directly
    import pandas as pd

    raw = pd.read_csv(SMALL / "ratings.csv")
    first = raw[raw.userId == 1].sort_values(["timestamp", "movieId"]).iloc[0]
    row = h.where("user_id = 1").first()
    assert row["movie_ids"][0] == first.movieId
    assert row["timestamps"][0] == first.timestamp
    assert row["ratings"][0] == pytest.approx(first.rating)


def test_movie_table_content(spark, small_run):
    _, result = small_run
    movies = spark.read.parquet(io.join(result.run_dir, "movies"))
    toy = movies.where("movie_id = 1").first()
    assert toy["title"] == "Toy Story (1995)"
    assert toy["year"] == 1995
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy["num_ratings"] == 215
    assert toy["imdb_id"] == "0114709" and toy["tmdb_id"] == 862
    assert toy["genome"] is None  # ml-latest-small has no genome
    # a title with a comma is read whole from its quotes
    assert movies.where("movie_id = 11").first()["title"] == "American President, The (1995)"
    assert movies.where("size(tags) > 0").count() > 1000
    no_genre = movies.where("size(genres) = 0").count()
    assert no_genre == 34  # "(no genres listed)" becomes an empty list
    # one file, in movie id order
    movie_dir = io.join(result.run_dir, "movies")
    assert len(io.parquet_parts(movie_dir)) == 1
    ids = io.read_parquet(movie_dir, columns=["movie_id"]).column(0).to_pylist()
    assert ids == sorted(ids) and len(ids) == 9_742


def test_vocabularies(spark, small_run):
    _, result = small_run
    mv = spark.read.parquet(io.join(result.run_dir, "vocab/movies")).orderBy("index").toPandas()
    assert list(mv["index"]) == list(range(9_742))
    assert mv["num_ratings"].is_monotonic_decreasing
    assert mv.iloc[0]["movie_id"] == 356  # Forrest Gump, 329 ratings
    users = spark.read.parquet(io.join(result.run_dir, "vocab/users")).toPandas()
    assert sorted(users["index"]) == list(range(610))
    genres = spark.read.parquet(io.join(result.run_dir, "vocab/genres")).toPandas()
    assert "Drama" in set(genres["genre"]) and "(no genres listed)" not in set(genres["genre"])


def test_split_assignment(spark, small_run):
    config, result = small_run
    splits = spark.read.parquet(io.join(result.run_dir, "splits")).toPandas()
    h = spark.read.parquet(io.join(result.run_dir, "histories")).toPandas().set_index("user_id")
    assert len(splits) == 610
    roles = splits["role"].value_counts().to_dict()
    assert set(roles) == {"train", "validation", "test"}
    assert 30 <= roles["test"] <= 95 and 30 <= roles["validation"] <= 95
    for row in splits.itertuples():
        hist = h.loc[row.user_id]
        assert row.last_movie_id == hist.movie_ids[-1]
        assert row.last_timestamp == hist.timestamps[-1]
        positives = {m for m, r in zip(hist.movie_ids, hist.ratings) if r >= 4.0}
        if row.role == "train":
            assert len(row.holdout_movie_ids) == 0
        else:
            held = set(row.holdout_movie_ids)
            assert len(positives) >= config.split.min_positives
            assert held <= positives
            assert len(held) == max(1, round(0.2 * len(positives)))


def test_split_is_deterministic(spark, small_run, tmp_path):
    """Run again into a root whose name has a URI's special characters: '#' and '?' used
    to cut the root at them ("again " here), so the run landed elsewhere, silently."""
    config, result = small_run
    root = tmp_path / "again #1?x%41"
    again = run_preprocess(spark, config.replace(artifact_root=str(root)))
    assert again.run_dir == f"file://{root}/preprocess/{again.manifest['run_id']}"
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    assert artifacts.verify(artifacts.resolve(str(root), "preprocess"))["status"] == "succeeded"
    a = spark.read.parquet(io.join(result.run_dir, "splits")).orderBy("user_id").toPandas()
    b = spark.read.parquet(io.join(again.run_dir, "splits")).orderBy("user_id").toPandas()
    assert a["role"].tolist() == b["role"].tolist()
    assert [list(x) for x in a["holdout_movie_ids"]] == [list(x) for x in b["holdout_movie_ids"]]


def test_manifest_and_pointer(small_run):
    config, result = small_run
    root = io.normalize_uri(config.artifact_root)
    assert artifacts.resolve(root, "preprocess") == result.run_dir
    manifest = artifacts.read_manifest(result.run_dir)
    assert manifest["status"] == "succeeded"
    assert manifest["inputs"]["files"]["ratings"]["md5"] == "325a6f09399d1c45671f187505e1a100"
    assert manifest["inputs"]["files"]["ratings"]["size"] == 2_483_723
    assert manifest["config"]["data"]["max_reject_fraction"] == 0.001
    paths = {o["path"] for o in manifest["outputs"]}
    assert "stats.json" in paths and "config.toml" in paths
    assert any(p.startswith("histories/part-") for p in paths)
    for key in ("pyspark", "tensorflow", "scann", "pyarrow"):
        assert manifest["versions"][key] != "not installed"
    stats = json.loads(io.read_text(io.join(result.run_dir, "stats.json")))
    assert stats["rating_mix"]["4.0"] == 26_818
    assert stats["ratings_per_user"]["min"] == 20


GOLDEN_SCHEMAS = {
    "histories": "struct<user_id:int,movie_ids:array<int>,ratings:array<float>,"
                 "timestamps:array<bigint>,num_ratings:int,mean_rating:float>",
    "movies": "struct<movie_id:int,title:string,year:int,genres:array<string>,num_ratings:int,"
              "mean_rating:float,tags:array<string>,genome:array<float>,imdb_id:string,tmdb_id:int>",
    "splits": "struct<user_id:int,role:string,holdout_movie_ids:array<int>,last_movie_id:int,"
              "last_timestamp:bigint>",
    "rejects": "struct<source:string,reason:string,record:string>",
    "vocab/movies": "struct<movie_id:int,index:int,num_ratings:int>",
    "vocab/users": "struct<user_id:int,index:int,num_ratings:int>",
    "vocab/genres": "struct<genre:string,index:int,num_movies:int>",
}


@pytest.mark.parametrize("table", sorted(GOLDEN_SCHEMAS))
def test_output_schemas_are_the_documented_ones(spark, small_run, table):
    _, result = small_run
    schema = spark.read.parquet(io.join(result.run_dir, table)).schema.simpleString()
    assert schema == GOLDEN_SCHEMAS[table]
