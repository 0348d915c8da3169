"""A tiny hand-made world for the model tests: a movie table, histories and splits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import ModelConfig, TrainConfig
from recsys.model.examples import ExampleStream, Splits
from recsys.model.inputs import MovieCatalog

GENRES = ["Action", "Comedy", "Drama"]


def movie_tables(n: int = 40, genome_for: tuple[int, ...] = ()) -> tuple[pa.Table, pa.Table]:
    ids = list(range(1, n + 1))
    movies = pa.table({
        "movie_id": ids,
        "title": [f"Movie {'alpha' if i % 2 else 'beta'} {i} ({1950 + i})" for i in ids],
        "year": [1950 + i for i in ids],
        "genres": [[GENRES[i % 3]] for i in ids],
        "genome": pa.array([[0.1 * (i % 5), 0.5, 0.9] if i in genome_for else None for i in ids],
                           pa.list_(pa.float32())),
    })
    vocab = pa.table({"movie_id": ids, "index": list(range(n)), "num_ratings": [1] * n})
    return movies, vocab


# Users own disjoint movie ranges so a test can tell whose history a window is.
USERS = {
    1: ("train", list(range(1, 13)), []),
    2: ("train", list(range(13, 25)), []),
    3: ("validation", list(range(25, 33)), [27, 30]),
    4: ("test", list(range(33, 41)), [35]),
}


@pytest.fixture
def world(tmp_path):
    movies, vocab = movie_tables()
    catalog = MovieCatalog.from_tables(movies, vocab, ModelConfig())
    rows = {"user_id": [], "movie_ids": [], "ratings": []}
    split_rows = {"user_id": [], "role": [], "holdout_movie_ids": []}
    for user, (role, seq, hold) in USERS.items():
        rows["user_id"].append(user)
        rows["movie_ids"].append(seq)
        rows["ratings"].append([float(1 + (m % 5)) for m in seq])
        split_rows["user_id"].append(user)
        split_rows["role"].append(role)
        split_rows["holdout_movie_ids"].append(hold)
    path = tmp_path / "histories"
    path.mkdir()
    table = pa.table(rows, schema=pa.schema([
        ("user_id", pa.int32()), ("movie_ids", pa.list_(pa.int32())),
        ("ratings", pa.list_(pa.float32()))]))
    pq.write_table(table.slice(0, 2), path / "part-0.parquet")
    pq.write_table(table.slice(2), path / "part-1.parquet")
    splits = Splits(pa.table(split_rows, schema=pa.schema([
        ("user_id", pa.int32()), ("role", pa.string()),
        ("holdout_movie_ids", pa.list_(pa.int32()))])), catalog)
    return catalog, splits, str(path)


def stream_of(world, *, kind="history", length=4, k=3, per_user=100, batch=2, **train):
    catalog, splits, path = world
    return ExampleStream(path, catalog, splits,
                         model=ModelConfig(kind=kind, history_length=length),
                         train=TrainConfig(targets_per_window=k, examples_per_user=per_user,
                                           batch_size=batch, users_per_chunk=1, **train))


def rows_of(batches):
    keys = batches[0].keys()
    return {k: np.concatenate([b[k] for b in batches]) for k in keys}
