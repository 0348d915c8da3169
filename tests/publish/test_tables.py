"""Publishing a night (DESIGN §4.5): one step from staged to visible, even when killed."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys import io
from recsys.publish.tables import publish_partition


def _night(spark, table: Path, date: str, run_id: str, value: int) -> str:  # noqa: ANN001
    df = spark.createDataFrame([(u, value) for u in range(5)], "user_id int, value int")
    return publish_partition(spark, df, table_uri=str(table), run_date=date, run_id=run_id,
                             manifest={"run_id": run_id}, files=1)


def _values(night: Path) -> set[int]:
    return set(pq.read_table(night).column("value").to_pylist())


def _files(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): io.md5(str(p))
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    assert io.exchange(str(a), str(b))
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]
    assert not io.exchange("hdfs://namenode/a", str(b))  # remote: no atomic swap, untouched
    assert [p.name for p in b.iterdir()] == ["x"]


def test_a_rerun_replaces_only_its_night_and_leaves_nothing_behind(spark, tmp_path):
    table = tmp_path / "t"
    _night(spark, table, "2026-11-20", "r1", 1)
    _night(spark, table, "2026-11-21", "r2", 2)
    other = _files(table / "run_date=2026-11-20")
    _night(spark, table, "2026-11-21", "r3", 3)
    assert _values(table / "run_date=2026-11-21") == {3}
    assert (table / "run_date=2026-11-21" / "_SUCCESS").is_file()
    assert _files(table / "run_date=2026-11-20") == other
    assert list((tmp_path / "_staging" / "t").iterdir()) == []
    assert not (tmp_path / "_replaced" / "t").exists()


def test_killed_right_after_the_swap_the_new_night_is_whole(spark, tmp_path, monkeypatch):
    table = tmp_path / "t"
    _night(spark, table, "2026-11-21", "r1", 1)
    real_delete = io.delete

    def killed(uri: str) -> None:
        if "_staging" in uri and uri.rstrip("/").endswith("-r2"):
            raise KeyboardInterrupt  # the process dies before removing the old version
        real_delete(uri)

    monkeypatch.setattr(io, "delete", killed)
    with pytest.raises(KeyboardInterrupt):
        _night(spark, table, "2026-11-21", "r2", 2)
    monkeypatch.setattr(io, "delete", real_delete)
    night = table / "run_date=2026-11-21"
    assert _values(night) == {2} and (night / "_SUCCESS").is_file()
    assert [p.name for p in (tmp_path / "_staging" / "t").iterdir()] == ["run_date=2026-11-21-r2"]
    # a reader globbing every Parquet file below the table (DuckDB's '<table>/**/*.parquet')
    # sees the published night only, not the version left staged beside it
    assert {p.relative_to(table).parts[0] for p in table.rglob("*.parquet")} == {
        "run_date=2026-11-21"}
    _night(spark, table, "2026-11-21", "r3", 3)  # the next run clears the leftover
    assert _values(night) == {3}
    assert list((tmp_path / "_staging" / "t").iterdir()) == []


def test_without_an_atomic_swap_a_night_cut_mid_swap_is_restored_first(spark, tmp_path,
                                                                        monkeypatch):
    table = tmp_path / "t"
    _night(spark, table, "2026-11-21", "r1", 1)
    before = _files(table / "run_date=2026-11-21")
    monkeypatch.setattr(io, "exchange", lambda a, b: False)  # e.g. HDFS
    real_move = io.move

    def killed(src: str, dst: str) -> None:
        real_move(src, dst)
        if "_replaced" in dst:
            raise KeyboardInterrupt  # dies between setting the old night aside and the rename

    monkeypatch.setattr(io, "move", killed)
    with pytest.raises(KeyboardInterrupt):
        _night(spark, table, "2026-11-21", "r2", 2)
    monkeypatch.setattr(io, "move", real_move)
    night = table / "run_date=2026-11-21"
    assert not night.exists()
    # the next run puts the previous version back before anything else, even if it fails
    broken = spark.createDataFrame([(1,)], "user_id int").selectExpr(
        "user_id", "raise_error('disk full') as value")
    with pytest.raises(Exception, match="disk full"):
        publish_partition(spark, broken, table_uri=str(table), run_date="2026-11-21",
                          run_id="r3", manifest={})
    assert _files(night) == before
    assert list((tmp_path / "_replaced" / "t").iterdir()) == []
    _night(spark, table, "2026-11-21", "r4", 4)
    assert _values(night) == {4}


def test_register_table_adds_each_night_and_refuses_other_columns(spark, tmp_path):
    import pyarrow as pa

    from recsys.publish.tables import CatalogMismatchError, register_table

    table = tmp_path / "scores"
    columns = pa.schema([("user_id", pa.int32()), ("value", pa.int32())])
    _night(spark, table, "2026-11-20", "r1", 1)
    _night(spark, table, "2026-11-21", "r2", 2)

    def nights() -> dict[str, int]:
        rows = spark.sql("SELECT CAST(run_date AS STRING) AS d, sum(value) AS v "
                         "FROM registered.scores GROUP BY run_date").collect()
        return {r.d: r.v for r in rows}

    spark.sql("DROP DATABASE IF EXISTS registered CASCADE")
    # first registration: created with the columns given, the night on disk before it too
    name = register_table(spark, database="registered", name="scores", table_uri=str(table),
                          columns=columns, run_date="2026-11-21")
    assert name == "registered.scores"
    assert spark.table(name).schema.simpleString() == \
        "struct<user_id:int,value:int,run_date:date>"
    assert nights() == {"2026-11-20": 5, "2026-11-21": 10}
    # a later night: only it is added; a re-run of a night is visible after the refresh
    _night(spark, table, "2026-11-22", "r3", 3)
    _night(spark, table, "2026-11-21", "r4", 4)
    register_table(spark, database="registered", name="scores", table_uri=str(table),
                   columns=columns, run_date="2026-11-22")
    assert nights() == {"2026-11-20": 5, "2026-11-21": 20, "2026-11-22": 15}
    other = pa.schema([("user_id", pa.int32()), ("value", pa.float32())])
    with pytest.raises(CatalogMismatchError, match=r"value int.*value float"):
        register_table(spark, database="registered", name="scores", table_uri=str(table),
                       columns=other, run_date="2026-11-22")
    spark.sql("DROP DATABASE registered CASCADE")


def test_a_catalog_table_at_another_place_is_refused_until_dropped(spark, tmp_path):
    """Two artifact roots (or table roots) on one catalog: the table reads the first one's
    directory, so a night published under the second was "published" to a table whose
    readers got nothing for it. The second is refused, naming both places."""
    import pyarrow as pa

    from recsys.publish.tables import CatalogMismatchError, register_table

    columns = pa.schema([("user_id", pa.int32()), ("value", pa.int32())])
    first, second = tmp_path / "root-a" / "scores", tmp_path / "root b" / "scores"
    _night(spark, first, "2026-11-20", "r1", 1)
    _night(spark, second, "2026-11-21", "r2", 2)
    spark.sql("DROP DATABASE IF EXISTS placed CASCADE")
    register_table(spark, database="placed", name="scores", table_uri=str(first),
                   columns=columns, run_date="2026-11-20")
    # the same place, written another way, is the same table
    register_table(spark, database="placed", name="scores", table_uri=f"file://{first}/",
                   columns=columns, run_date="2026-11-20")
    with pytest.raises(CatalogMismatchError) as refused:
        register_table(spark, database="placed", name="scores", table_uri=str(second),
                       columns=columns, run_date="2026-11-21")
    said = str(refused.value)
    assert said.startswith(f"catalog table placed.scores is at file:{first}, but this run "
                           f"publishes it at {io.normalize_uri(str(second))} (")
    assert "DROP TABLE placed.scores" in said and "spark.metastore_dir" in said
    rows = spark.sql("SELECT CAST(run_date AS STRING) AS d FROM placed.scores").collect()
    assert {r.d for r in rows} == {"2026-11-20"}  # nothing was added to the first
    spark.sql("DROP TABLE placed.scores")
    assert (first / "run_date=2026-11-20").is_dir()  # its files stay
    register_table(spark, database="placed", name="scores", table_uri=str(second),
                   columns=columns, run_date="2026-11-21")
    rows = spark.sql("SELECT CAST(run_date AS STRING) AS d, sum(value) AS v "
                     "FROM placed.scores GROUP BY run_date").collect()
    assert {r.d: r.v for r in rows} == {"2026-11-21": 10}
    spark.sql("DROP DATABASE placed CASCADE")


def test_keep_nights_removes_older_nights_from_the_catalog_then_the_disk(spark, tmp_path,
                                                                        monkeypatch):
    """``score.keep_nights``: after tonight is published, nights older than the newest
    ``keep`` leave the catalog and the disk; tonight's stays even when it is older (a
    back-filled night); a night that cannot be moved stays published and is said."""
    import pyarrow as pa

    from recsys.publish.tables import expire_nights, register_table

    table = tmp_path / "tables" / "scores"
    columns = pa.schema([("user_id", pa.int32()), ("value", pa.int32())])
    for day, value in (("20", 1), ("21", 2), ("22", 3), ("23", 4)):
        _night(spark, table, f"2026-11-{day}", f"r{day}", value)
    spark.sql("DROP DATABASE IF EXISTS kept CASCADE")
    full = register_table(spark, database="kept", name="scores", table_uri=str(table),
                          columns=columns, run_date="2026-11-23")

    def in_catalog() -> dict[str, int]:
        rows = spark.sql("SELECT CAST(run_date AS STRING) AS d, sum(value) AS v "
                         f"FROM {full} GROUP BY run_date").collect()
        return {r.d: r.v for r in rows}

    def on_disk() -> list[str]:
        return sorted(p.name for p in table.iterdir())

    def partitions() -> list[str]:
        return sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {full}").collect())

    assert expire_nights(spark, full, str(table), keep=0, tonight="2026-11-23",
                         run_id="x0") == ([], [])  # 0: every night kept
    assert len(on_disk()) == 4
    # what a run killed while deleting left in _expired goes first
    left = tmp_path / "tables" / "_expired" / "scores" / "run_date=2026-11-01-dead"
    left.mkdir(parents=True)
    (left / "part-0.parquet").write_bytes(b"half")
    removed, failed = expire_nights(spark, full, str(table), keep=2, tonight="2026-11-23",
                                    run_id="x1")
    assert (removed, failed) == (["2026-11-20", "2026-11-21"], [])
    assert on_disk() == ["run_date=2026-11-22", "run_date=2026-11-23"]
    assert partitions() == ["run_date=2026-11-22", "run_date=2026-11-23"]
    assert in_catalog() == {"2026-11-22": 15, "2026-11-23": 20}
    assert list((tmp_path / "tables" / "_expired" / "scores").iterdir()) == []
    # a back-filled night older than the nights kept is tonight's: it stays
    _night(spark, table, "2026-11-10", "r10", 9)
    register_table(spark, database="kept", name="scores", table_uri=str(table),
                   columns=columns, run_date="2026-11-10")
    assert expire_nights(spark, full, str(table), keep=2, tonight="2026-11-10",
                         run_id="x2") == ([], [])
    assert in_catalog() == {"2026-11-10": 45, "2026-11-22": 15, "2026-11-23": 20}
    # the next night: 2026-11-10 and 2026-11-22 are beyond the newest two; one cannot be
    # moved (a filesystem that refuses): it is said, and the other goes all the same
    _night(spark, table, "2026-11-24", "r24", 5)
    register_table(spark, database="kept", name="scores", table_uri=str(table),
                   columns=columns, run_date="2026-11-24")
    real_move = io.move

    def refusing(src: str, dst: str) -> None:
        if "run_date=2026-11-10" in src:
            raise PermissionError(13, "Permission denied")
        real_move(src, dst)

    monkeypatch.setattr(io, "move", refusing)
    removed, failed = expire_nights(spark, full, str(table), keep=2, tonight="2026-11-24",
                                    run_id="x3")
    assert removed == ["2026-11-22"]
    assert failed == [f"kept.scores run_date=2026-11-10: dropped from the catalog, but its "
                      f"files stay at {io.normalize_uri(str(table / 'run_date=2026-11-10'))} "
                      "(Permission denied)"]
    assert on_disk() == ["run_date=2026-11-10", "run_date=2026-11-23", "run_date=2026-11-24"]
    assert in_catalog() == {"2026-11-23": 20, "2026-11-24": 25}
    monkeypatch.setattr(io, "move", real_move)
    # the next run tries again
    assert expire_nights(spark, full, str(table), keep=2, tonight="2026-11-24",
                         run_id="x4") == (["2026-11-10"], [])
    assert on_disk() == ["run_date=2026-11-23", "run_date=2026-11-24"]
    spark.sql("DROP DATABASE kept CASCADE")
