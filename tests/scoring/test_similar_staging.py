"""Tonight's similar-movies partition, staged by the driver from the index run's table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.artifacts import ArtifactError
from recsys.index.similar import SIMILAR, similar_table
from recsys.scoring.score import SIMILAR_MOVIES, stage_similar_movies


def test_the_index_table_is_staged_with_the_stamp_and_success(tmp_path):
    index_dir = tmp_path / "index"
    (index_dir / SIMILAR).mkdir(parents=True)
    table = similar_table(np.array([10, 20, 30]), np.array([[20, 30], [10, 30], [20, 10]]),
                          np.array([[0.9, 0.5], [0.9, 0.4], [0.5, 0.5]], np.float32))
    pq.write_table(table, index_dir / SIMILAR / "part-0.parquet")
    staging = tmp_path / "tables" / "_staging" / "run_date=2026-11-24-r1"
    assert stage_similar_movies(str(index_dir), str(staging), model_version="m7",
                                run_id="r1") == 3
    assert sorted(p.name for p in staging.iterdir()) == ["_SUCCESS", "part-00000-r1-a0.parquet"]
    staged = pq.read_table(staging / "part-00000-r1-a0.parquet")
    assert staged.schema.equals(SIMILAR_MOVIES)
    assert staged.column("similar").to_pylist() == table.column("similar").to_pylist()
    assert set(staged.column("model_version").to_pylist()) == {"m7"}
    assert set(staged.column("run_id").to_pylist()) == {"r1"}


def test_an_index_table_of_another_layout_is_refused(tmp_path):
    index_dir = tmp_path / "index"
    (index_dir / SIMILAR).mkdir(parents=True)
    pq.write_table(pa.table({"movie_id": [1], "neighbours": [[2]]}),
                   index_dir / SIMILAR / "part-0.parquet")
    with pytest.raises(ArtifactError, match="similar-movies layout"):
        stage_similar_movies(str(index_dir), str(tmp_path / "staging"), model_version="m",
                             run_id="r")
    assert not (tmp_path / "staging").exists()


def test_last_ratings_go_back_to_the_end_of_their_rows():
    from recsys.scoring.score import ratings_at_ends

    offsets = np.array([0, 3, 4, 4, 7])  # movie ids of four users, one with none
    tails = np.array([0, 2, 3, 3, 6])  # their last ratings: 2, 1, 0 and 3 of them
    got = ratings_at_ends(offsets, tails, np.array([4.5, 5.0, 3.0, 1.0, 2.0, 3.0], np.float32))
    np.testing.assert_array_equal(got, [0.0, 4.5, 5.0, 3.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="row 1 has 2 ratings for 1 movies"):
        ratings_at_ends(np.array([0, 3, 4]), np.array([0, 1, 3]), np.ones(3, np.float32))


def test_histories_of_another_layout_are_refused_before_scoring(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.scoring.score import read_histories

    good = tmp_path / "good"
    good.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1, 2], pa.int32()),
                             "movie_ids": pa.array([[3, 4], [5]], pa.list_(pa.int32())),
                             "ratings": pa.array([[4.0, 3.5], [5.0]], pa.list_(pa.float32())),
                             "timestamps": pa.array([[1, 2], [3]], pa.list_(pa.int64()))}),
                   good / "part-0.parquet")
    rows = read_histories(spark, str(good)).collect()
    assert [(r.user_id, list(r.movie_ids), list(r.ratings)) for r in rows] == \
        [(1, [3, 4], [4.0, 3.5]), (2, [5], [5.0])]
    # only the last ratings, for a tower that reads that many (or none); movie ids whole
    for window, want in ((1, [[3.5], [5.0]]), (0, [[], []]), (5, [[4.0, 3.5], [5.0]])):
        cut = read_histories(spark, str(good), rating_window=window).collect()
        assert [list(r.ratings) for r in cut] == want
        assert [list(r.movie_ids) for r in cut] == [[3, 4], [5]]
    wide = tmp_path / "wide"
    wide.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int32()),
                             "movie_ids": pa.array([[3]], pa.list_(pa.int64())),
                             "ratings": pa.array([[4.0]], pa.list_(pa.float32()))}),
                   wide / "part-0.parquet")
    with pytest.raises(ArtifactError, match="column .movie_ids. is list<.*int64>, expected"):
        read_histories(spark, str(wide))
    missing = tmp_path / "missing"
    missing.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int32())}), missing / "part-0.parquet")
    with pytest.raises(ArtifactError, match="column .movie_ids. is missing"):
        read_histories(spark, str(missing))
