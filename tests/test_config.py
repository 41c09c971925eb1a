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


ALL_FIVE = {"recommenders": {"enabled": ["popularity", "item_cf", "content", "als", "bpr"]},
            "fit": {"max_users": None}}  # what every model registered before 2026-12-02 combined


def test_the_registered_models_feature_settings_ignore_how_fast_bpr_fits():
    from salerank.jobs.registry import feature_config_hash

    base = load_config(overrides=ALL_FIVE)
    threaded = load_config(overrides={**ALL_FIVE, "recommenders": {**ALL_FIVE["recommenders"], "bpr": {"threads": 2}}})
    other_factors = load_config(overrides={**ALL_FIVE, "recommenders": {**ALL_FIVE["recommenders"],
                                                                         "bpr": {"factors": 16}}})
    assert feature_config_hash(base) == feature_config_hash(threaded) != feature_config_hash(other_factors)
    assert base["recommenders"]["bpr"]["threads"] == 1  # the hash did not touch the config


def test_the_feature_settings_name_the_recommenders_and_the_fit_sample_only_when_changed():
    from salerank.jobs.registry import feature_config_hash

    five = load_config(overrides=ALL_FIVE)
    # the hash such models were registered with (at d1d159e): they stay comparable
    assert feature_config_hash(five) == "400290d9b7d015a5"
    reordered = load_config(overrides={**ALL_FIVE, "recommenders": {
        "enabled": ["bpr", "als", "content", "item_cf", "popularity"]}})
    assert feature_config_hash(five) == feature_config_hash(reordered)
    # a recommender left out changes the features, and its settings then no longer matter
    without_bpr = load_config(overrides={"fit": {"max_users": None}})
    tuned_away = load_config(overrides={"fit": {"max_users": None}, "recommenders": {"bpr": {"factors": 8}}})
    assert feature_config_hash(without_bpr) == feature_config_hash(tuned_away) != feature_config_hash(five)
    # the fit's cap changes ALS's factors: it is part of the features (the default's included)
    assert feature_config_hash(load_config()) != feature_config_hash(without_bpr)
    assert feature_config_hash(load_config(overrides={"fit": {"max_users": 1000}})) != feature_config_hash(load_config())


@pytest.mark.parametrize("depth", [0, -3, 2.5, "100", True])
def test_rank_depth_must_be_a_positive_whole_number(tmp_path, depth):
    path = tmp_path / "conf.yaml"
    path.write_text(f"metamodel:\n  rank_depth: {depth!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match="rank_depth"):
        load_config(path)
    assert load_config(overrides={"metamodel": {"rank_depth": 100}})["metamodel"]["rank_depth"] == 100


BAD_VALUES = {
    "top_k 0": ({"top_k": 0}, "top_k must be a whole number of at least 1, got 0"),
    "empty C": ({"metamodel": {"C": []}}, "metamodel.C must be one or a list of positive numbers, got []"),
    "negative C": ({"metamodel": {"C": [1.0, -1]}}, "metamodel.C must be"),
    "no validation day": ({"metamodel": {"validation_days": 0}}, "metamodel.validation_days must be a whole"),
    "validation on every day": ({"metamodel": {"train_days": 3, "validation_days": 3}},
                                "metamodel.validation_days (3) must be fewer than metamodel.train_days (3)"),
    "ratio 0": ({"metamodel": {"negative_ratios": [0, 2]}}, "metamodel.negative_ratios must be"),
    "unknown similarity": ({"recommenders": {"item_cf": {"similarity": "dice"}}},
                           "recommenders.item_cf.similarity: unknown 'dice' (known: asymmetric, cosine, jaccard)"),
    "unknown signal": ({"metamodel": {"signals": ["days_open", "weather"]}}, "metamodel.signals: unknown 'weather'"),
    "unknown backbone": ({"image_labelling": {"backbone": "resnet"}}, "image_labelling.backbone: unknown 'resnet'"),
    "negative size": ({"recommenders": {"als": {"factors": -4}}}, "recommenders.als.factors must be"),
    "fractional size": ({"spark": {"scoring_partitions": 2.5}}, "spark.scoring_partitions must be"),
    "negative sample": ({"report": {"sample_users": -1}}, "report.sample_users must be a whole number of at least 0"),
    "stale as text": ({"max_data_lag_days": "2"}, "max_data_lag_days must be null or a whole number"),
    "unknown recommender": ({"recommenders": {"enabled": ["als", "ease"]}}, "recommenders.enabled: unknown 'ease'"),
    "no recommender": ({"recommenders": {"enabled": []}}, "recommenders.enabled must be a non-empty list"),
    "a recommender twice": ({"recommenders": {"enabled": ["als", "als"]}}, "each once, got ['als', 'als']"),
    "fit on no user": ({"fit": {"max_users": 0}}, "fit.max_users must be null or a whole number of at least 1"),
    "bpr on a sample": ({"recommenders": {"enabled": ["als", "bpr"]}, "fit": {"max_users": 10}},
                        "BPR has no fold-in"),
    "never released": ({"image_labelling": {"release_after_seconds": None}},
                       "image_labelling.release_after_seconds must be a positive number, got None"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_value_that_cannot_work_is_named_with_its_key(case, tmp_path):
    import yaml

    settings, expected = BAD_VALUES[case]
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and expected in str(caught.value)


def test_every_mistake_is_named_at_once_and_the_defaults_pass():
    load_config()  # the defaults are valid
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"top_k": 0, "metamodel": {"C": []}})
    assert "top_k" in str(caught.value) and "metamodel.C" in str(caught.value)


def test_the_meta_model_combines_the_enabled_recommenders_in_one_order_and_the_fit_cap_reaches_als_and_bpr():
    from salerank.recommenders import from_config

    config = load_config(overrides={"recommenders": {"enabled": ["als", "popularity"]}, "fit": {"max_users": 500}})
    chosen = from_config(config)
    assert [r.name for r in chosen] == ["popularity", "als"]
    assert chosen[1].max_users == 500 and chosen[1].seed == config["seed"]
    assert [r.name for r in from_config(load_config())] == ["popularity", "item_cf", "content", "als"]
    assert load_config()["fit"]["max_users"] == 1_000_000
