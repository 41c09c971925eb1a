"""`salerank train --alias` moves the alias only to a version that is not worse than the one
holding it, by NDCG on the new version's validation days: hand-worked values, then trainings
on the small world into a real MLflow SQLite store (a worse candidate refused, a better one
promoted, --force, a champion that cannot be compared)."""
import datetime as dt
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from salerank.conf import ConfigError, load_config
from salerank.jobs import pipeline
from salerank.jobs.cli import main
from salerank.metamodel import training
from salerank.metamodel.model import MetaModel, signed_log1p
from salerank.metamodel.promotion import incomparable, not_worse, validation_ndcg

NAME = "salerank-metamodel"
TRAINING = {"metamodel": {"train_days": 4, "validation_days": 2}}


class Fixed:
    """A model whose probability is the ``x`` column."""

    feature_names = ["x"]

    def predict_proba(self, features):
        return features[:, 0]


def test_validation_ndcg_by_hand():
    examples = pd.DataFrame([  # user, day, sale, label, x
        ("a", "d1", "s1", 1, 0.5), ("a", "d1", "s2", 0, 0.9), ("a", "d1", "s3", 0, 0.1),  # hit at rank 2
        ("b", "d1", "s1", 1, 0.8), ("b", "d1", "s2", 0, 0.6), ("b", "d1", "s3", 1, 0.2),  # ranks 1 and 3
        # the same user another day is another list; the tie goes to the lower sale_id, never the label
        ("a", "d2", "s9", 1, 0.4), ("a", "d2", "s4", 0, 0.4),
    ], columns=["user_id", "day", "sale_id", "label", "x"])
    ndcg, lists = validation_ndcg(Fixed(), examples, k=10)
    by_list = [1 / math.log2(3), (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)), 1 / math.log2(3)]
    assert lists == 3 and ndcg == pytest.approx(np.mean(by_list), abs=1e-12)
    ndcg_at_1, _ = validation_ndcg(Fixed(), examples, k=1)  # only b's list has its purchase first
    assert ndcg_at_1 == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("candidate, champion, tolerance, promoted", [
    (0.500, 0.500, 0.0, True),      # equal: promoted
    (0.3 - 0.2, 0.1, 0.0, True),    # equal but for the last bit
    (0.4999, 0.500, 0.0, False),
    (0.495, 0.500, 0.005, True),    # exactly the tolerance below
    (0.4949, 0.500, 0.005, False),
    (0.600, 0.500, 0.0, True),
])
def test_not_worse_than_the_champion_by_more_than_the_tolerance(candidate, champion, tolerance, promoted):
    assert not_worse(candidate, champion, tolerance) is promoted


def test_a_champion_is_comparable_when_the_examples_carry_its_features_ranked_alike():
    candidate = MetaModel(["a", "b", "rank_a"], ranked=("a",), rank_depth=100)
    assert incomparable(MetaModel(["a", "rank_a"], ranked=("a",), rank_depth=100), candidate) is None
    assert incomparable(MetaModel(["a", "b"]), candidate) is None  # no ranks: depth does not matter
    assert "needs the features ['c']" in incomparable(MetaModel(["a", "c"]), candidate)
    assert "cut at depth None" in incomparable(MetaModel(["a", "rank_a"], ranked=("a",)), candidate)


@pytest.mark.parametrize("tolerance", [-0.01, "0.01", None, True, float("nan")])
def test_the_tolerance_is_a_number_of_at_least_zero(tolerance):
    with pytest.raises(ConfigError, match="registry.promotion_tolerance"):
        load_config(overrides={"registry": {"promotion_tolerance": tolerance}})
    assert load_config(overrides={"registry": {"promotion_tolerance": 0}})["registry"]["promotion_tolerance"] == 0


# --- trainings on the small world -------------------------------------------------------

@pytest.fixture(scope="module")
def examples():
    """Each day's training examples, computed once for the module with every feature (a
    configuration with fewer features picks its columns by name: the same rows and values)."""
    return {}


@pytest.fixture
def train(spark, world, world_dir, tables, config, tmp_path, monkeypatch, examples, capsys):
    """``train(*flags, crippled=False, conf={})``: `salerank train --alias champion` of the
    world's last day into this test's OUT, on 4 days (the last 2 validate), without photos and
    with shorter factor fits (faster); ``crippled``: every fit's coefficients reversed, a model
    that ranks the sales it should rank first last. Returns the exit status, what it printed,
    and its MLflow run. The world's tables are loaded once (the suite's ``tables``)."""
    monkeypatch.setattr(pipeline, "load_tables", lambda spark, data_dir: tables)
    real = training.day_examples

    def once(tables, catalog, scorers, day, *args, **kwargs):
        if day not in examples:
            examples[day] = real(tables, catalog, scorers, day, *args, **kwargs)
        return examples[day]

    monkeypatch.setattr(training, "day_examples", once)
    fit = MetaModel.fit

    def reversed_fit(self, examples):
        fit(self, examples)
        self.pipeline_[-1].coef_ = -self.pipeline_[-1].coef_
        return self

    def run(*flags, crippled=False, conf=TRAINING):
        settings = {"spark": config["spark"], "image_labelling": {"enabled": False},
                    "recommenders": {"als": {"iterations": 5}, "bpr": {"iterations": 10}},
                    **conf}
        path = tmp_path / "conf.yaml"
        path.write_text(yaml.safe_dump(settings))
        with monkeypatch.context() as patch:
            if crippled:
                patch.setattr(MetaModel, "fit", reversed_fit)
            code = main(["train", "--data", str(world_dir / "data"), "--date", str(world.last_date),
                         "--out", str(tmp_path), "--alias", "champion", "--conf", str(path), *flags])
        printed = capsys.readouterr()
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["salerank"], order_by=["attributes.start_time DESC"],
                                  output_format="list")
        return code, printed.out + printed.err, runs[0]

    yield run
    mlflow.set_tracking_uri(None)


def champion_version() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def days_before(world, examples, *offsets) -> pd.DataFrame:
    """The training examples of these days before the world's last day (validation: 2, 1)."""
    frames = [examples[world.last_date - dt.timedelta(days=d)] for d in offsets]
    assert all(len(f) for f in frames)  # every day has examples: the last two validate
    return pd.concat(frames, ignore_index=True)


def ndcg_at_10(probability: np.ndarray, examples: pd.DataFrame) -> float:
    """NDCG@10 per (user, day) list, written out afresh: rank by probability, ties by sale_id."""
    frame = examples[["user_id", "day", "sale_id", "label"]].assign(p=probability)
    values = []
    for _, rows in frame.groupby(["user_id", "day"]):
        rows = rows.sort_values(["p", "sale_id"], ascending=[False, True])
        gains = rows["label"].to_numpy()[:10]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(int(rows["label"].sum()), 10)))
        values.append(dcg / ideal)
    return float(np.mean(values))


def registered_ndcg(version: str, examples: pd.DataFrame) -> float:
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version}")
    pipeline = mlflow.sklearn.load_model(f"models:/{NAME}/{version}")
    features = info.metadata["feature_names"]
    return ndcg_at_10(pipeline.predict_proba(examples[features].to_numpy(dtype=float))[:, 1], examples)


@pytest.mark.slow
def test_a_worse_version_is_refused_and_force_promotes_it(world, examples, train):
    code, _, first = train()
    assert code == 0 and first.data.tags["promotion"] == "first" and champion_version() == "1"

    code, printed, refused = train(crippled=True)
    metrics = refused.data.metrics
    validation = days_before(world, examples, 2, 1)
    assert code == 3, printed
    assert refused.data.tags["promotion"] == "refused" and refused.data.tags["promotion.champion"] == f"{NAME}/1"
    assert refused.data.tags["promotion.champion_fitted_days"] == "2"  # trained on the same days
    assert metrics["promotion.champion_ndcg"] == pytest.approx(registered_ndcg("1", validation), abs=1e-12)
    assert metrics["promotion.candidate_ndcg"] < metrics["promotion.champion_ndcg"] - 0.1  # reversed: far worse
    assert metrics["promotion.validation_lists"] == validation.groupby(["user_id", "day"]).ngroups
    assert champion_version() == "1"  # the alias stayed
    assert mlflow.MlflowClient().get_model_version(NAME, "2").run_id == refused.info.run_id  # registered
    assert "alias 'champion' NOT moved: it stays on salerank-metamodel/1" in printed
    assert f"champion {metrics['promotion.champion_ndcg']:.4f}" in printed
    assert f"new {metrics['promotion.candidate_ndcg']:.4f}" in printed

    code, printed, forced = train("--force", crippled=True)
    assert code == 0, printed
    assert forced.data.tags["promotion"] == "forced" and champion_version() == "3"
    assert forced.data.metrics["promotion.champion_ndcg"] == metrics["promotion.champion_ndcg"]
    assert "by --force" in printed


@pytest.mark.slow
def test_a_better_version_is_promoted_and_a_champion_that_cannot_be_compared_stays(world, examples, train):
    code, _, first = train(crippled=True)
    assert code == 0 and first.data.tags["promotion"] == "first" and champion_version() == "1"

    code, printed, promoted = train()
    metrics = promoted.data.metrics
    validation = days_before(world, examples, 2, 1)
    assert code == 0, printed
    assert promoted.data.tags["promotion"] == "promoted" and champion_version() == "2"
    assert metrics["promotion.champion_ndcg"] == pytest.approx(registered_ndcg("1", validation), abs=1e-12)
    # the new version as it was validated: its chosen C and ratio, fitted on the 2 days before
    earlier = days_before(world, examples, 4, 3)
    positives = earlier.groupby(["user_id", "day"])["label"].transform("sum")
    sample = earlier[(earlier["label"] == 1) | (earlier["draw"] < metrics["chosen_negative_ratio"] * positives)]
    features = mlflow.models.get_model_info(f"models:/{NAME}/2").metadata["feature_names"]
    refit = make_pipeline(FunctionTransformer(signed_log1p), StandardScaler(),
                          LogisticRegression(C=metrics["chosen_C"], max_iter=1000))
    refit.fit(sample[features].to_numpy(dtype=float), sample["label"].to_numpy())
    expected = ndcg_at_10(refit.predict_proba(validation[features].to_numpy(dtype=float))[:, 1], validation)
    assert metrics["promotion.candidate_ndcg"] == pytest.approx(expected, abs=1e-9)
    assert metrics["promotion.candidate_ndcg"] > metrics["promotion.champion_ndcg"] + 0.1
    assert "alias 'champion' moved from salerank-metamodel/1 to salerank-metamodel/2" in printed

    fewer = {"metamodel": {**TRAINING["metamodel"], "signals": [], "ranks": False}}  # lacks the champion's features
    code, printed, stayed = train(conf=fewer)
    assert code == 2 and "Traceback" not in printed
    assert f"{NAME}/2 cannot be scored on this version's examples: it needs the features" in printed
    assert "registered salerank-metamodel/3 without moving the alias" in printed
    assert stayed.data.tags["promotion"] == "incomparable" and stayed.info.status == "FINISHED"
    assert "promotion.champion_ndcg" not in stayed.data.metrics and champion_version() == "2"

    code, printed, forced = train("--force", conf=fewer)
    assert code == 0 and forced.data.tags["promotion"] == "forced" and champion_version() == "4"
