"""The registered meta-model comes back as it was trained: features, C, ranks and their depth."""
import mlflow
import numpy as np
import pandas as pd
import pytest

from salerank.conf import load_config
from salerank.jobs.registry import load_metamodel, register_metamodel
from salerank.metamodel.model import MetaModel


@pytest.mark.parametrize("kind", ["logistic", "gbm"])
def test_a_registered_model_scores_as_it_was_trained(tmp_path, kind):
    rng = np.random.default_rng(0)
    examples = pd.DataFrame({"useful": rng.exponential(2.0, 800), "rank_useful": rng.integers(1, 7, 800)})
    examples["label"] = (rng.random(800) < 1 / (1 + np.exp(2 - np.log1p(examples.useful)))).astype(int)
    model = MetaModel(["useful", "rank_useful"], C=0.5, ranked=("useful",), rank_depth=5, kind=kind).fit(examples)
    # the non-personal model for users with no history is saved and loaded with it
    model.fallback_ = MetaModel(["useful"], C=2.0, kind=kind).fit(examples)
    model.fallback_.calibration_ = (0.9, -0.1)
    config = load_config(overrides={"metamodel": {"rank_depth": 5}})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run():
            register_metamodel(model, config, alias=config["registry"]["alias"])
        loaded = load_metamodel(config, model.feature_names).model
    finally:
        mlflow.set_tracking_uri(None)
    assert (loaded.rank_depth, loaded.C, loaded.ranked, loaded.kind) == (5, 0.5, ("useful",), kind)
    assert loaded.version_ == model.version_
    block = {"useful": rng.exponential(2.0, (20, 40))}  # 40 sales: depth 5 matters
    np.testing.assert_array_equal(loaded.score_blocks(block), model.score_blocks(block))
    assert (loaded.fallback_.C, loaded.fallback_.calibration_, loaded.fallback_.kind) == (2.0, (0.9, -0.1), kind)
    np.testing.assert_array_equal(loaded.fallback_.score_blocks(block), model.fallback_.score_blocks(block))
    assert loaded.fallback_.version_ != model.version_
