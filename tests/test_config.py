import pytest

from salerank.conf import ConfigError, default_config, flatten, load_config


def test_user_file_is_merged_over_defaults(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("top_k: 5\nmetamodel:\n  C: 0.5\n")
    config = load_config(path)
    assert config["top_k"] == 5
    assert config["metamodel"]["C"] == 0.5
    assert config["metamodel"]["negatives_per_purchase"] == default_config()["metamodel"]["negatives_per_purchase"]


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("metamodel:\n  negative_per_purchase: 3\n")
    with pytest.raises(ConfigError, match="metamodel.negative_per_purchase"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("top_k: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_each_output_folder_gets_its_own_mlflow_store(config, tmp_path):
    import mlflow

    from salerank.jobs.tracking import tracking_uri

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}")  # an earlier run
    assert tracking_uri(config, str(tmp_path / "second")) == f"sqlite:///{(tmp_path / 'second').resolve() / 'mlflow.db'}"


def test_the_registered_models_feature_settings_ignore_how_fast_bpr_fits():
    from salerank.jobs.registry import feature_config_hash

    base = load_config()
    threaded = load_config(overrides={"recommenders": {"bpr": {"threads": 2}}})
    other_factors = load_config(overrides={"recommenders": {"bpr": {"factors": 16}}})
    assert feature_config_hash(base) == feature_config_hash(threaded) != feature_config_hash(other_factors)
    assert base["recommenders"]["bpr"]["threads"] == 1  # the hash did not touch the config


@pytest.mark.parametrize("depth", [0, -3, 2.5, "100", True])
def test_rank_depth_must_be_a_positive_whole_number(tmp_path, depth):
    path = tmp_path / "conf.yaml"
    path.write_text(f"metamodel:\n  rank_depth: {depth!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match="rank_depth"):
        load_config(path)
    assert load_config(overrides={"metamodel": {"rank_depth": 100}})["metamodel"]["rank_depth"] == 100
