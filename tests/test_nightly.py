"""End to end: the nightly run on a small generated world, through the command line."""
import datetime as dt

import mlflow
import pandas as pd
import pytest
import yaml

from salerank.jobs.cli import main
from salerank.jobs.pipeline import run_nightly
from salerank.world import truth_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def conf_file(config, tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "small.yaml"
    path.write_text(yaml.safe_dump({"spark": config["spark"], "metamodel": config["metamodel"]}))
    return path


@pytest.fixture(scope="module")
def night(spark, world, world_dir, config, tmp_path_factory):
    out = tmp_path_factory.mktemp("night")
    result = run_nightly(spark, str(world_dir / "data"), world.last_date, str(out), config,
                         keep_rankings=True)
    return result, out


def test_output_contract(spark, world, night):
    result, out = night
    recs = spark.read.parquet(str(out / "recommendations" / f"run_date={world.last_date}")).toPandas()
    assert list(recs.columns) == ["user_id", "rank", "sale_id", "score", "model_version"]
    day = world.last_date.isoformat()
    before = lambda events: events[events["ts"] < day]  # noqa: E731
    recent = (world.last_date - dt.timedelta(days=30)).isoformat()
    active = set(before(world.visits).query("ts >= @recent").user_id) | set(
        before(world.purchases).query("ts >= @recent").user_id)
    assert set(recs.user_id) == active and result.active_users == len(active)
    open_sales = set(world.sales.query("open_date <= @day and close_date >= @day").sale_id)
    bought = set(zip(before(world.purchases).user_id, before(world.purchases).sale_id))
    for user, ranking in recs.groupby("user_id"):
        ranking = ranking.sort_values("rank")
        assert ranking["rank"].tolist() == list(range(1, 11))
        assert ranking.sale_id.nunique() == 10 and set(ranking.sale_id) <= open_sales
        assert not {(user, s) for s in ranking.sale_id} & bought
        assert ranking.score.is_monotonic_decreasing
    assert (recs.model_version == result.model_version).all()


def test_metamodel_recovers_true_preferences_better_than_popularity(world, night):
    result, _ = night
    day = world.last_date.isoformat()
    open_ids = sorted(world.sales.query("open_date <= @day and close_date >= @day").sale_id)
    truth = truth_metrics(result.rankings, world.user_truth, world.sale_truth, open_ids, 10)
    assert truth.loc["metamodel", "true_ndcg@10"] > truth.loc["popularity", "true_ndcg@10"] + 0.1


def test_quick_evaluation_against_the_days_purchases(world, night):
    """One day of a small world has too few purchases to rank strategies by (that is what
    the truth test above is for), but every strategy is scored on exactly those buyers."""
    result, _ = night
    day = world.last_date.isoformat()
    buyers = set(world.purchases[world.purchases.ts.str[:10] == day].user_id) & set(
        result.rankings.user_id)
    assert set(result.metrics.index) == {"metamodel", "popularity", "item_cf", "content", "als", "bpr",
                                         "image_themes"}
    assert (result.metrics["users"] == len(buyers)).all() and len(buyers) > 0
    assert result.metrics[["precision@10", "recall@10", "ndcg@10"]].stack().between(0, 1).all()


def test_run_is_recorded_in_mlflow(night):
    result, out = night
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_version"] == result.model_version
    assert len(run.data.tags["data_fingerprint"]) == 64
    assert run.data.params["metamodel.train_days"] == "6"
    assert run.data.metrics["metamodel.ndcg_at_10"] == pytest.approx(result.metrics.loc["metamodel", "ndcg@10"])
    assert "validation_auc" in run.data.metrics
    features = len(mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/metamodel_coefficients.json")) - 1
    assert features == 6 + 4 + 6  # six recommenders' scores, four signals, six ranks
    loaded = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/metamodel")
    assert loaded.predict_proba([[1.0] * features]).shape == (1, 2)
    assert run.data.metrics["chosen_C"] in (0.01, 0.1, 1.0, 10.0)
    root = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metamodel_reliability.png", "metamodel_reliability.csv", "metamodel_validation_grid.csv"} <= root
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "tagger")}
    assert {"tagger/head.weights.h5", "tagger/tagger.json", "tagger/per_tag_metrics.json"} <= artifacts
    assert run.data.metrics["tagger_top1_accuracy"] > 0.9  # held-out fifth of the hand labels
    assert run.data.tags["tagger_version"].startswith("tagger-")


def test_photos_are_tagged_with_their_scenes_and_themes_published(spark, world, night):
    result, out = night
    night_dir = f"run_date={world.last_date}"
    tags = pd.read_parquet(out / "image_tags" / night_dir)
    assert list(tags.columns) == ["sale_id", "image_path", "tag", "probability", "rank", "model_version"]
    assert set(tags.image_path) == set(world.sale_images.image_path)
    assert tags.groupby("image_path")["rank"].apply(sorted).map(lambda r: r == [1, 2, 3, 4, 5]).all()
    # the head was trained on the hand labels: its top tag is the photo's true scene
    top = tags[tags["rank"] == 1].merge(world.photo_scenes, on="image_path")
    assert (top.tag == top.theme).mean() > 0.9
    sale_themes = pd.read_parquet(out / "themes" / night_dir / "sale_themes")
    theme_tags = pd.read_parquet(out / "themes" / night_dir / "theme_tags")
    assert set(sale_themes.sale_id) == set(world.sales.sale_id)
    assert theme_tags.theme.nunique() == 8 and (theme_tags.weight >= 0).all()


def test_rerun_of_a_night_is_identical_and_reuses_the_image_cache(world, world_dir, night, conf_file, caplog):
    result, out = night
    relative = f"recommendations/run_date={world.last_date}"
    first = pd.read_parquet(out / relative).sort_values(["user_id", "rank"]).reset_index(drop=True)
    with caplog.at_level("INFO", logger="salerank"):
        code = main(["nightly", "--data", str(world_dir / "data"), "--date", str(world.last_date),
                     "--out", str(out), "--conf", str(conf_file)])
    assert code == 0
    assert "0 images tagged now, the others from the cache" in caplog.text
    again = pd.read_parquet(out / relative).sort_values(["user_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


def test_bad_data_exits_non_zero_and_publishes_nothing(world, world_dir, conf_file, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in world.tables:
        (data / f"{name}.csv").write_bytes((world_dir / "data" / f"{name}.csv").read_bytes())
    sales = pd.read_csv(data / "sales.csv")
    sales.loc[2, "close_date"] = "not-a-date"
    sales.to_csv(data / "sales.csv", index=False)
    code = main(["nightly", "--data", str(data), "--date", str(world.last_date),
                 "--out", str(tmp_path / "out"), "--conf", str(conf_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert "sales.csv, column 'close_date': value is not a valid date" in err and "not-a-date" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "recommendations").exists()


def test_night_without_open_sales_publishes_an_empty_output(spark, world, world_dir, config, tmp_path):
    later = world.last_date + dt.timedelta(days=20)  # every sale has closed; users still active
    result = run_nightly(spark, str(world_dir / "data"), later, str(tmp_path), config)
    assert result.open_sales == 0 and result.active_users > 0 and result.rows == 0
    empty = spark.read.parquet(result.output)
    assert empty.count() == 0 and "model_version" in empty.columns


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as caught:
        main(["nightly", "--data", "x", "--date", "2025-02-30", "--out", "y"])
    assert caught.value.code == 2
