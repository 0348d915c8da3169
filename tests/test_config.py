from __future__ import annotations

import numpy as np
import pytest

from recsys.config import (SELECT_METRICS, Config, ConfigError, ModelConfig, TrainConfig,
                           dump_toml, load_config)
from recsys.evaluation.metrics import ranking_metrics

REPO_CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"


def test_defaults_match_default_toml():
    """default.toml restates the defaults, except the training knobs it sizes for the
    embedded ~100K-rating corpus (the dataclass defaults are sized for 25M ratings)."""
    small = load_config(REPO_CONF / "default.toml")
    assert small.replace(model=Config().model, train=Config().train) == Config()
    assert (small.model.history_length, small.train.min_target_rating) == (100, 4.0)
    assert small.model.kind == Config().model.kind == "history"
    # the small corpus trains on the held-out-set objective; the full-scale default stays
    # the causal next-item objective of DESIGN §5
    assert (small.train.objective, Config().train.objective) == ("held_out_set", "next_item")


def test_prod_toml_loads():
    cfg = load_config(REPO_CONF / "prod.toml")
    assert cfg.artifact_root.startswith("hdfs://")
    assert cfg.spark.shuffle_partitions == 200


def test_overrides_win_over_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('artifact_root = "/a"\n[data]\nmax_reject_fraction = 0.5\n')
    cfg = load_config(f, ["data.max_reject_fraction=0.25", "spark.master=local[4]", "split.seed=7"])
    assert cfg.artifact_root == "/a"
    assert cfg.data.max_reject_fraction == 0.25
    assert cfg.spark.master == "local[4]"
    assert cfg.split.seed == 7


def test_int_accepted_for_float():
    assert load_config(None, ["data.max_reject_fraction=1"]).data.max_reject_fraction == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.max_reject_fractoin=0.1", "unknown configuration key 'data.max_reject_fractoin'"),
        ("nosection.x=1", "unknown configuration key 'nosection'"),
        ("split.seed=abc", "split.seed: expected int, got str"),
        ("spark.ui_enabled=1", "spark.ui_enabled: expected bool"),
        ("data=3", "'data' is a section"),
        ("novalue", "must look like section.key=value"),
        ("score.run_date_timezone=Mars/Olympus_Mons", "score.run_date_timezone must be 'UTC', "
         "'local' or an IANA time zone name such as 'Europe/Berlin', got 'Mars/Olympus_Mons'"),
        ("score.run_date_timezone=../../etc/passwd", "score.run_date_timezone must be 'UTC'"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.batch_size=-4", "train.batch_size must be >= 1, got -4"),
        ("train.learning_rate=0", "train.learning_rate must be a finite number > 0, got 0.0"),
        ("train.learning_rate=nan", "train.learning_rate: expected a number, got nan"),
        ("train.objective=cloze", "train.objective must be one of 'next_item', 'held_out_set'"),
        ("train.select_metric=recall@7", "train.select_metric must be one of 'recall@10'"),
        ("train.set_holdout_fraction=1", "train.set_holdout_fraction must be in (0, 1), got 1.0"),
        ("train.min_target_rating=6", "train.min_target_rating must be in [0, 5]"),
        ("model.kind=ncf", "model.kind must be one of 'history', 'mf', got 'ncf'"),
        ("model.embedding_dim=0", "model.embedding_dim must be >= 1"),
        ("model.history_length=0", "model.history_length must be >= 1"),
        ("model.tower_layers=[64, 0]", "model.tower_layers must be >= 1 (every item), got (64, 0)"),
        ("model.dropout=1", "model.dropout must be in [0, 1), got 1.0"),
        ("model.dropout=nan", "model.dropout: expected a number, got nan"),
        ("model.temperature=-0.1", "model.temperature must be a finite number > 0"),
        ("model.hidden_dim=9", "model.hidden_dim (9) must be a multiple of model.attention_heads (2)"),
        ("split.holdout_fraction=0", "split.holdout_fraction must be in (0, 1), got 0.0"),
        ("split.positive_threshold=5.5", "split.positive_threshold must be in [0.5, 5]"),
        ("split.test_users_fraction=0.95", "split.validation_users_fraction + split.test_users_fraction must be <= 1"),
        ("data.max_reject_fraction=1.5", "data.max_reject_fraction must be in [0, 1], got 1.5"),
        ("data.layout=xml", "data.layout must be one of 'auto', 'csv', 'dat', 'dat-latin1', '100k'"),
        ("data.encoding=klingon", "data.encoding must be 'auto' or an encoding name"),
        ("preprocess.history_files=0", "preprocess.history_files must be >= 1"),
        ("index.recall_floor=1.01", "index.recall_floor must be in [0, 1]"),
        ("index.num_neighbors=0", "index.num_neighbors must be >= 1"),
        ("score.top_n=0", "score.top_n must be >= 1, got 0"),
        ("score.recommendations_table=recs-tonight", "score.recommendations_table must be a SQL identifier"),
        ("score.similar_movies_table=Movielens_Recommendations",
         "score.recommendations_table, score.user_embeddings_table and "
         "score.similar_movies_table must be three different names (their nights would be "
         "written into one directory and one catalog table), got 'movielens_recommendations', "
         "'movielens_user_embeddings', 'Movielens_Recommendations'"),
        ("spark.log_level=LOUD", "spark.log_level must be one of 'ALL'"),
        ("spark.shuffle_partitions=0", "spark.shuffle_partitions must be >= 1"),
        ("spark.driver_memory=6 GB", "spark.driver_memory must be a whole, positive number of bytes"),
        ("spark.driver_memory=1.5g", "spark.driver_memory must be a whole, positive number of bytes"),
        ("spark.max_partition_bytes=lots", "spark.max_partition_bytes must be a whole, positive number"),
        ("spark.master=local[two]", "spark.master must be a Spark master URL"),
        ("spark.master=LOCAL[2]", "spark.master must be a Spark master URL"),
        ("spark.master=cluster", "spark.master must be a Spark master URL"),
        ("spark.master=local[0]", "spark.master must be a Spark master URL"),
        ("index.anisotropic_threshold=nan", "index.anisotropic_threshold: expected a number, got nan"),
        ("evaluate.als_reg_params=[0.1, nan]", "evaluate.als_reg_params[]: expected a number, got nan"),
        ("spark.master=local[2,0]", "spark.master must be a Spark master URL"),
        ("spark.driver_memory=0g", "spark.driver_memory must be a whole, positive number"),
        ("evaluate.als_ranks=[]", "evaluate.als_ranks must be a non-empty list, got ()"),
        ("evaluate.als_reg_params=[-0.1]", "evaluate.als_reg_params must be >= 0 (every item)"),
        ("evaluate.ease_l2=0", "evaluate.ease_l2 must be a finite number > 0"),
        ("nightly.max_model_age_hours=-1", "nightly.max_model_age_hours must be >= 0, got -1.0"),
        ("nightly.keep_runs=-1", "nightly.keep_runs must be >= 0, got -1"),
        ("score.keep_nights=-1", "score.keep_nights must be >= 0, got -1"),
        ("nightly.stage_timeout_hours=-1", "nightly.stage_timeout_hours must be >= 0, got -1.0"),
        ("nightly.stop_grace_seconds=-1", "nightly.stop_grace_seconds must be >= 0, got -1.0"),
    ],
)
def test_values_out_of_range_name_the_key_and_the_rule(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(REPO_CONF / "default.toml", [override])
    assert str(raised.value).startswith(message), str(raised.value)


def test_values_at_the_edges_of_their_range_are_accepted():
    cfg = load_config(REPO_CONF / "default.toml", [
        "train.patience=0", "model.dropout=0", "model.min_ratings_for_id=0",
        "model.tower_layers=[]", "split.validation_users_fraction=0", "data.max_reject_fraction=1",
        "data.encoding=latin-1", "spark.log_level=info", "index.recall_floor=1",
        "evaluate.ease_max_movies=0", "nightly.max_model_age_hours=0", "train.min_target_rating=0",
        "nightly.keep_runs=0", "score.keep_nights=0",
        "nightly.stage_timeout_hours=0", "nightly.stop_grace_seconds=0",
    ])
    assert (cfg.train.patience, cfg.model.tower_layers, cfg.spark.log_level) == (0, (), "info")


@pytest.mark.parametrize("master", [
    "local", "local[4]", "local[*]", "local[2,3]", "local[*, 4]", "local-cluster[2, 1, 1024]",
    "yarn", "spark://host-a:7077,host-b:7077", "k8s://https://kube:6443", "custom://anything",
])
def test_every_form_of_spark_master_is_accepted(master):
    cfg = load_config(REPO_CONF / "default.toml", [f"spark.master={master}",
                                                   "spark.driver_memory=512MB",
                                                   "spark.max_partition_bytes=64mb"])
    assert cfg.spark.master == master


def test_sections_that_must_agree_are_checked_together():
    """The mf baseline cannot train default.toml's held-out-set objective; the same key on
    its own (and with the objective it can train) is fine."""
    with pytest.raises(ConfigError, match="needs model.kind = 'history'"):
        load_config(REPO_CONF / "default.toml", ["model.kind=mf"])
    cfg = load_config(REPO_CONF / "default.toml", ["model.kind=mf", "train.objective=next_item"])
    assert cfg.model.kind == "mf"
    with pytest.raises(ConfigError, match="needs model.kind = 'history'"):
        Config().replace(model=ModelConfig(kind="mf"), train=TrainConfig(objective="held_out_set"))


def test_every_select_metric_is_one_the_validation_computes():
    ranked = np.array([[0, 1, 2]])
    relevant = (np.array([0, 1]), np.array([2]))
    assert set(SELECT_METRICS) <= set(ranking_metrics(ranked, relevant))


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_a_file_saved_with_a_byte_order_mark_or_crlf_reads_and_one_not_in_utf8_is_said(tmp_path):
    windows = tmp_path / "windows.toml"  # as Notepad saves it
    windows.write_bytes("\ufeff[train]\r\nepochs = 2\r\n".encode("utf-8"))
    assert load_config(windows).train.epochs == 2
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[train]\nepochs = 2\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.toml: not UTF-8 text, as TOML files are: "
                                          r"byte 0xe9 on line 3; save it as UTF-8"):
        load_config(latin)


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ['artifact_root=s3a://b/"x"', "data.layout=dat", "split.seed=3"])
    f = tmp_path / "out.toml"
    f.write_text(dump_toml(cfg))
    assert load_config(f) == cfg


def test_the_embedded_corpus_with_the_full_scale_model_is_warned_about(caplog):
    import argparse

    from recsys.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    warned = []
    for argv in ([], ["--conf-file", "conf/default.toml"], ["--set", "data.input=/data/ml-25m"],
                 ["--set", "train.epochs=8"]):
        caplog.clear()
        config_from_args(parser.parse_args(argv), trains=True)
        warned.append("pass --conf-file conf/default.toml" in caplog.text)
    assert warned == [True, False, False, False]
    caplog.clear()
    config_from_args(parser.parse_args([]))  # a job that trains nothing: no model to warn of
    assert "conf/default.toml" not in caplog.text
