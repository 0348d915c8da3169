"""Shared fixtures: one real local[2] SparkSession per test session, and helpers that
write small hand-made MovieLens releases."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest

import recsys  # noqa: F401  (environment for TensorFlow before anything imports it)
from recsys.config import Config, DataConfig, SparkConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "data" / "ml-latest-small"

MOVIES_CSV = (
    "movieId,title,genres\r\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\r\n"
    "2,Jumanji (1995),Adventure|Children|Fantasy\r\n"
    '3,"American President, The (1995)",Comedy|Drama|Romance\r\n'
    "4,Unknown Year,(no genres listed)\r\n"
)


@pytest.fixture(scope="session")
def spark():
    from recsys.spark import build_session

    session = build_session(
        "recsys-tests",
        SparkConfig(master="local[2]", driver_memory="3g", shuffle_partitions=4,
                    hive_catalog=False),
        extra={"spark.default.parallelism": "4"},
    )
    yield session
    session.stop()


def zone_on_another_day() -> tuple[str, set[str]]:
    """An IANA zone whose calendar is on another day than UTC's now (Kiritimati is
    UTC+14, Pago Pago UTC-11), and the dates UTC has now: a job that takes its run_date
    from that zone publishes a night that the UTC default would not."""
    from recsys import artifacts

    now = dt.datetime.now(dt.timezone.utc)
    zone = "Pacific/Kiritimati" if now.hour >= 11 else "Pacific/Pago_Pago"
    assert artifacts.run_date(timezone=zone, now=now) != artifacts.run_date(now=now)
    return zone, {artifacts.run_date(now=now), artifacts.run_date()}


def write_release(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (directory / name).write_bytes(data)
    return directory


def ratings_csv(*rows: str, header: str = "userId,movieId,rating,timestamp") -> str:
    return "\r\n".join([header, *rows]) + "\r\n"


def make_config(tmp_path: Path, source: Path | str, **data_overrides) -> Config:
    return Config(
        artifact_root=str(tmp_path / "artifacts"),
        data=DataConfig(input=str(source), **data_overrides),
        spark=SparkConfig(master="local[2]", shuffle_partitions=4),
    ).replace(preprocess=Config().preprocess.__class__(history_files=2))


@pytest.fixture(scope="session")
def small_run(spark, tmp_path_factory):
    """ml-latest-small preprocessed once per test session: (config, PreprocessResult)."""
    from recsys.features.preprocess import run_preprocess

    tmp = tmp_path_factory.mktemp("small")
    config = make_config(tmp, SMALL)
    return config, run_preprocess(spark, config)


@pytest.fixture(scope="session")
def small_trained(small_run):
    """The shipped conf/default.toml model trained once on ml-latest-small (TrainResult)."""
    from recsys.config import load_config
    from recsys.model.train import run_train

    config, _ = small_run
    shipped = load_config(REPO / "conf" / "default.toml")
    return run_train(config.replace(model=shipped.model, train=shipped.train))


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["TF_USE_LEGACY_KERAS"] = "1"
    return env
