"""The rolling backtest on a small generated world: outputs anyone can recompute, bit for bit."""
import copy
import datetime as dt
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from salerank.jobs.replay import run_backtest
from salerank.jobs.cli import main
from salerank.metamodel.evaluation import PER_USER

pytestmark = pytest.mark.slow
MODELS = {"metamodel", "popularity", "item_cf", "content", "als", "fallback"}


@pytest.fixture(scope="module")
def bt_config(config):
    settings = copy.deepcopy(config)
    settings["image_labelling"]["enabled"] = False  # the image stage is tested elsewhere
    settings["metamodel"]["train_days"] = 4
    return settings


def _run(spark, world, world_dir, bt_config, out, days=2):
    """The backtest of the world's ``days`` days before its last."""
    start = world.last_date - dt.timedelta(days=days)
    return run_backtest(spark, str(world_dir / "data"), start, world.last_date - dt.timedelta(days=1),
                        str(out), bt_config, truth_days=2, users="all")


@pytest.fixture(scope="module")
def backtest(spark, world, world_dir, bt_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("backtest")
    return _run(spark, world, world_dir, bt_config, out), out


def inactive_buyers(world, config) -> int:
    """(buyer, day) pairs of the two backtest days whose buyer had no event in the lookback
    before the day: the night ranks no list for them."""
    count = 0
    for d in (world.last_date - dt.timedelta(days=2), world.last_date - dt.timedelta(days=1)):
        since = (d - dt.timedelta(days=config["active_lookback_days"])).isoformat()
        recent = pd.concat([e[(e.ts >= since) & (e.ts < d.isoformat())] for e in (world.visits, world.purchases)])
        count += len(set(_truth(world, d, 2).user_id) - set(recent.user_id))
    return count


def test_metrics_json_covers_every_model_breakdown_and_day(backtest, world, bt_config):
    result, out = backtest
    written = json.loads((out / "metrics.json").read_text())
    assert written == result.metrics and set(written["models"]) == MODELS
    days = [str(world.last_date - dt.timedelta(days=i)) for i in (2, 1)]
    for entry in written["models"].values():
        assert {"overall", "new_sales", "established_sales", "new_users", "returning_users",
                "per_day"} <= set(entry)
        assert sorted(entry["per_day"]) == days
        overall = entry["overall"]
        for name in ("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage@10"):
            assert 0 <= overall[name] <= 1
        assert overall["users"] == entry["new_users"]["users"] + entry["returning_users"]["users"]
        assert entry["inactive_users"]["users"] == inactive_buyers(world, bt_config)
    popularity = written["models"]["popularity"]["overall"]
    assert written["models"]["item_cf"]["overall"]["coverage@10"] > popularity["coverage@10"]


def _truth(world, d: dt.date, truth_days: int) -> pd.DataFrame:
    """What a list of day ``d`` could have found: purchases in the window of sales open on
    ``d`` that the buyer had not bought before ``d`` (a list never holds those)."""
    sales = world.sales
    open_ids = set(sales[(sales.open_date <= d.isoformat()) & (sales.close_date >= d.isoformat())].sale_id)
    p = world.purchases
    window = p[(p.ts >= d.isoformat()) & (p.ts < (d + dt.timedelta(days=truth_days)).isoformat())]
    before = set(zip(*p[p.ts < d.isoformat()][["user_id", "sale_id"]].values.T))
    window = window[[pair not in before for pair in zip(window.user_id, window.sale_id)]]
    return window[window.sale_id.isin(open_ids)][["user_id", "sale_id"]].drop_duplicates()


def test_written_recommendations_recompute_the_metrics(spark, backtest, world):
    """Recall, hit rate, NDCG and MAP recomputed from the published lists and the raw
    purchases, by their textbook definitions (binary relevance, k = 10)."""
    result, out = backtest
    for model in ("metamodel", "item_cf", "fallback"):
        recall, hits, ndcg, average_precision = [], [], [], []
        for d in (world.last_date - dt.timedelta(days=2), world.last_date - dt.timedelta(days=1)):
            truth = _truth(world, d, 2)
            if model == "fallback":  # one list, given to every buyer
                one = spark.read.parquet(str(out / "fallback" / "model=metamodel" / f"run_date={d}")).toPandas()
                assert sorted(one["rank"]) == list(range(1, 11)) and one.sale_id.nunique() == 10
                recs = one.merge(truth[["user_id"]].drop_duplicates(), how="cross")
            else:
                recs = spark.read.parquet(str(out / "recommendations" / f"model={model}" / f"run_date={d}")).toPandas()
                assert list(recs.columns) == ["user_id", "rank", "sale_id", "score", "content_version"]
            assert recs.groupby("user_id")["rank"].max().le(10).all()
            assert set(truth.user_id) <= set(recs.user_id)  # users="all": every buyer is ranked
            lists = {user: list(rows.sort_values("rank").sale_id) for user, rows in recs.groupby("user_id")}
            for user, bought in truth.groupby("user_id"):
                relevant = set(bought.sale_id)
                found = [sale in relevant for sale in lists[user][:10]]  # by rank, 1 first
                recall.append(sum(found) / len(relevant))
                hits.append(float(any(found)))
                dcg = sum(1 / np.log2(rank + 1) for rank, hit in enumerate(found, 1) if hit)
                ideal = sum(1 / np.log2(rank + 1) for rank in range(1, min(len(relevant), 10) + 1))
                ndcg.append(dcg / ideal)
                precisions = [sum(found[:rank]) / rank for rank, hit in enumerate(found, 1) if hit]
                average_precision.append(sum(precisions) / min(len(relevant), 10))
        overall = result.metrics["models"][model]["overall"]
        assert overall["users"] == len(recall) > 0
        assert overall["recall@10"] == pytest.approx(np.mean(recall))
        assert overall["hit_rate@10"] == pytest.approx(np.mean(hits))
        assert overall["ndcg@10"] == pytest.approx(np.mean(ndcg))
        assert overall["map@10"] == pytest.approx(np.mean(average_precision))
        assert 0 < overall["ndcg@10"] and 0 < overall["map@10"]  # something to recompute


def test_every_mean_has_its_interval_and_the_metamodel_is_compared_with_each_recommender(backtest):
    result, _ = backtest
    metrics = result.metrics
    assert metrics["bootstrap"]["replicates"] == 1000 and metrics["bootstrap"]["level"] == 0.95
    for entry in metrics["models"].values():
        for part in [entry[s] for s in ("overall", "new_sales", "established_sales", "new_users",
                                        "returning_users")] + list(entry["per_day"].values()):
            if not part["users"]:
                continue
            assert set(part["ci95"]) == {f"{m}@10" for m in PER_USER}
            for name, (low, high) in part["ci95"].items():  # to the last bit of two sums
                assert low - 1e-12 <= part[name] <= high + 1e-12
    assert {(c["a"], c["b"]) for c in metrics["comparisons"].values()} == {
        (model, "metamodel") for model in MODELS - {"metamodel"}}
    for c in metrics["comparisons"].values():
        for name, d in c["overall"].items():
            assert d["difference"] == pytest.approx(metrics["models"][c["b"]]["overall"][name]
                                                    - metrics["models"][c["a"]]["overall"][name])
            low, high = d["ci95"]
            assert low - 1e-12 <= d["difference"] <= high + 1e-12
            assert (d["verdict"] == "no detectable difference") == (low <= 0 <= high)
    per_day = result.per_day[result.per_day["segment"] == "overall"]
    assert (per_day["ndcg@10_low"] - 1e-12 <= per_day["ndcg@10"]).all()
    assert (per_day["ndcg@10"] <= per_day["ndcg@10_high"] + 1e-12).all()


def test_same_seed_same_backtest_bit_for_bit(spark, backtest, world, world_dir, bt_config, tmp_path):
    """The last day again, on its own: its recommendations and its metrics (intervals
    included) are the same bytes, whatever range it was part of."""
    result, out = backtest
    d = world.last_date - dt.timedelta(days=1)
    again = _run(spark, world, world_dir, bt_config, tmp_path, days=1)
    for model in ("metamodel", "als"):
        path = f"recommendations/model={model}/run_date={d}"
        read = lambda root: (spark.read.parquet(str(root / path)).toPandas()  # noqa: E731
                             .sort_values(["user_id", "rank"]).reset_index(drop=True))
        pd.testing.assert_frame_equal(read(tmp_path), read(out))
    for model, entry in result.metrics["models"].items():
        assert again.metrics["models"][model]["per_day"] == {str(d): entry["per_day"][str(d)]}, model
    assert json.loads((tmp_path / "metrics.json").read_text()) == again.metrics


def test_mlflow_parent_run_with_a_child_per_model_and_plots(backtest):
    result, out = backtest
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    children = mlflow.search_runs(search_all_experiments=True,
                                  filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert set(children["tags.mlflow.runName"]) == MODELS
    assert (children["metrics.overall.ndcg_at_10"].between(0, 1)).all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.mlflow_run_id, "plots")}
    assert artifacts == {"plots/ndcg_per_day.png", "plots/lift_over_popularity.png"}


def test_backtest_command_refuses_an_inverted_range(world_dir, tmp_path, capsys):
    code = main(["backtest", "--data", str(world_dir / "data"), "--start", "2025-02-02",
                 "--end", "2025-02-01", "--out", str(tmp_path)])
    assert code == 2 and "before --start" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_the_fallback_list_can_be_compared_like_any_model(world_dir, tmp_path, capsys):
    # the command's early check knows the fallback list among the models it may compare
    code = main(["backtest", "--data", str(world_dir / "data"), "--start", "2025-02-01",
                 "--end", "2025-02-02", "--out", str(tmp_path), "--compare", "fallback", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "no model 'nope'" in err and "fallback" in err.split("its models:")[1]


def test_backtest_command_refuses_an_unknown_model_to_compare(world_dir, tmp_path, capsys):
    code = main(["backtest", "--data", str(world_dir / "data"), "--start", "2025-02-01",
                 "--end", "2025-02-02", "--out", str(tmp_path), "--compare", "popularity", "contnet"])
    assert code == 2 and "--compare: no model 'contnet'" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()
