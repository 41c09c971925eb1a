"""End to end: the nightly run on a small generated world, through the command line."""
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from salerank.jobs.cli import main
from salerank.jobs.experiments import parse_experiments, variant_of
from salerank.jobs.pipeline import run_nightly, run_training
from salerank.jobs.publish import content_checksum
from salerank.jobs.registry import load_metamodel
from salerank.world import truth_metrics
from conftest import with_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def conf_file(night_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "small.yaml"
    path.write_text(yaml.safe_dump({key: night_config[key] for key in ("spark", "metamodel", "experiments")}))
    return path


# Only the shared fixtures (conftest's trained and night) publish to their OUT; a test that
# publishes a night does it in an OUT of its own (own_out, copy_of_night), so that no test reads
# what another one published.

@pytest.fixture(scope="module")
def store_config(night_config, trained):
    """The night's configuration with the trained model's MLflow store, for an OUT of its own."""
    _, out = trained
    return with_store(night_config, out)


@pytest.fixture(scope="module")
def store_conf_file(store_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "store.yaml"
    path.write_text(yaml.safe_dump({key: store_config[key] for key in ("spark", "metamodel", "experiments", "mlflow")}))
    return path


def own_out(night, tmp_path):
    """An empty OUT but for the night's image cache (photos already tagged are not tagged again):
    nights published there need ``store_config``."""
    mine = tmp_path / "out"
    shutil.copytree(night[1] / "image_cache", mine / "image_cache")
    return mine


def copy_of_night(night, tmp_path):
    """A copy of the night's OUT: its published night, image cache and MLflow store (whose runs
    keep their artifacts in the original's ``mlartifacts``), for a test that runs that night again."""
    mine = tmp_path / "out"
    shutil.copytree(night[1], mine, ignore=shutil.ignore_patterns("_leases"))
    return mine


def night_by_hand(world, day: dt.date, k: int = 10, lookback_days: int = 30) -> dict:
    """What the night of ``day`` ranks, from the world's tables: the users who visited or
    bought in the ``lookback_days`` before it, the sales open on it, the (user, sale) pairs
    bought before it, and the rows of a top ``k`` (per active user k, or fewer when they have
    bought all but fewer of the open sales)."""
    iso, recent = day.isoformat(), (day - dt.timedelta(days=lookback_days)).isoformat()
    visits, purchases = (events[events["ts"] < iso] for events in (world.visits, world.purchases))
    active = set(visits[visits.ts >= recent].user_id) | set(purchases[purchases.ts >= recent].user_id)
    open_sales = set(world.sales.query("open_date <= @iso and close_date >= @iso").sale_id)
    bought = set(zip(purchases.user_id, purchases.sale_id))
    bought_open = purchases[purchases.sale_id.isin(open_sales)].groupby("user_id").sale_id.nunique()
    rows = sum(min(k, len(open_sales) - int(bought_open.get(user, 0))) for user in active)
    return {"active": active, "open": open_sales, "bought": bought, "rows": rows}


def test_output_contract(spark, world, night):
    result, out = night
    recs = spark.read.parquet(str(out / "recommendations" / f"run_date={world.last_date}")).toPandas()
    assert list(recs.columns) == ["user_id", "rank", "sale_id", "score", "model_version"]
    hand = night_by_hand(world, world.last_date)
    active, open_sales, bought = hand["active"], hand["open"], hand["bought"]
    assert set(recs.user_id) == active and result.active_users == len(active)
    assert result.open_sales == len(open_sales) and result.rows == len(recs) == hand["rows"]
    for user, ranking in recs.groupby("user_id"):
        ranking = ranking.sort_values("rank")
        assert ranking["rank"].tolist() == list(range(1, 11))
        assert ranking.sale_id.nunique() == 10 and set(ranking.sale_id) <= open_sales
        assert not {(user, s) for s in ranking.sale_id} & bought
        assert ranking.score.is_monotonic_decreasing
    assert (recs.model_version == result.model_version).all()


def test_a_fallback_list_is_published_for_users_without_one(spark, world, night, night_config):
    """For new users and users with no recent activity: each exported strategy's list for a user
    with no history, in OUT/fallback and in each experiment's fallback.jsonl."""
    result, out = night
    day = world.last_date
    fallback = spark.read.parquet(str(out / "fallback" / f"run_date={day}")).toPandas()
    assert list(fallback.columns) == ["strategy", "rank", "sale_id", "score", "model_version"]
    lists = {s: f.sort_values("rank") for s, f in fallback.groupby("strategy")}
    assert set(lists) == {"metamodel", "popularity"}
    open_sales = night_by_hand(world, day)["open"]
    for strategy, ranking in lists.items():
        assert ranking["rank"].tolist() == list(range(1, 11)) and set(ranking.sale_id) <= open_sales
        assert ranking.score.is_monotonic_decreasing and ranking.sale_id.nunique() == 10
    assert (lists["metamodel"].model_version == result.model_version).all()
    assert lists["popularity"].model_version.isna().all()
    assert ((lists["metamodel"].score > 0) & (lists["metamodel"].score < 1)).all()  # a probability
    # popularity's: distinct users who visited or bought each open sale in the window, ties by sale_id
    since = (day - dt.timedelta(days=night_config["recommenders"]["popularity"]["window_days"])).isoformat()
    events = pd.concat([e[(e.ts >= since) & (e.ts < day.isoformat())] for e in (world.visits, world.purchases)])
    users = events[events.sale_id.isin(open_sales)].groupby("sale_id").user_id.nunique()
    users = users.reindex(sorted(open_sales), fill_value=0)
    expected = sorted(users.index, key=lambda sale: (-users[sale], sale))[:10]
    assert lists["popularity"].sale_id.tolist() == expected
    assert lists["popularity"].score.tolist() == [float(users[s]) for s in expected]
    # the meta-model's list for nobody is its non-personal model's ranking, registered with it:
    # popularity, days open and days left of the open sales (and popularity's rank), by hand
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    trained_on = mlflow.models.get_model_info("models:/salerank-metamodel@champion").metadata["feature_names"]
    fallback_model = load_metamodel(night_config, trained_on).model.fallback_
    assert fallback_model.feature_names == ["popularity", "days_open", "days_left", "rank_popularity"]
    sales = world.sales.set_index("sale_id").loc[sorted(open_sales)]
    counts = users.to_numpy(dtype=float)[None, :]
    features = {"popularity": counts, "rank_popularity": None,
                "days_open": np.array([[(day - dt.date.fromisoformat(str(d))).days for d in sales.open_date]], float),
                "days_left": np.array([[(dt.date.fromisoformat(str(d)) - day).days for d in sales.close_date]], float)}
    probability = fallback_model.score_blocks({k: v for k, v in features.items() if v is not None})[0]
    order = sorted(range(len(sales)), key=lambda j: (-probability[j], sales.index[j]))[:10]
    assert lists["metamodel"].sale_id.tolist() == list(sales.index[order])
    np.testing.assert_allclose(lists["metamodel"].score, probability[order], rtol=1e-9)
    folder = out / "exports" / f"run_date={day}" / "meta-vs-pop"
    lines = [json.loads(line) for line in (folder / "fallback.jsonl").read_text().splitlines()]
    assert [(line["variant"], line["strategy"], line["fallback"]) for line in lines] == [
        ("control", "popularity", True), ("treatment", "metamodel", True)]
    assert all("user_id" not in line for line in lines)
    assert lines[1]["model_version"] == result.model_version and "model_version" not in lines[0]
    for line in lines:
        assert [r["sale_id"] for r in line["recommendations"]] == lists[line["strategy"]].sale_id.tolist()
        assert [r["position"] for r in line["recommendations"]] == list(range(1, 11))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["fallback"]["file"] == "fallback.jsonl" and manifest["fallback"]["lines"] == 2


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
    hand = night_by_hand(world, world.last_date)
    # the truth: purchases on the day of sales open on it, not bought before, by active users
    todays = world.purchases[world.purchases.ts.str[:10] == world.last_date.isoformat()]
    todays = todays[[(u, s) not in hand["bought"] and s in hand["open"] and u in hand["active"]
                     for u, s in zip(todays.user_id, todays.sale_id)]]
    bought = todays.groupby("user_id").sale_id.agg(set)
    assert set(result.metrics.index) == {"metamodel", "popularity", "item_cf", "content", "als", "image_themes"}
    assert (result.metrics["users"] == len(bought)).all() and len(bought) > 0
    discount = 1 / np.log2(np.arange(2, 12))  # rank 1..10
    for strategy, row in result.metrics.iterrows():
        ranked = result.rankings[result.rankings.strategy == strategy].sort_values("rank")
        top = ranked.groupby("user_id").sale_id.agg(list)
        hits = {user: np.array([s in sales for s in top.get(user, [])[:10]], bool) for user, sales in bought.items()}
        by_hand = {"precision@10": np.mean([h.sum() / 10 for h in hits.values()]),
                   "recall@10": np.mean([hits[u].sum() / len(s) for u, s in bought.items()]),
                   "ndcg@10": np.mean([discount[:len(hits[u])][hits[u]].sum() / discount[:min(10, len(s))].sum()
                                       for u, s in bought.items()]),
                   "hit_rate@10": np.mean([h.any() for h in hits.values()])}
        assert row[list(by_hand)].tolist() == pytest.approx(list(by_hand.values()), rel=1e-12), strategy


def test_training_is_recorded_and_registered_in_mlflow(trained):
    result, out = trained
    assert result.model_version == "salerank-metamodel/1"
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["metamodel.train_days"] == "6"
    # every point of the configured grid was validated, and the logged choice is the point whose
    # validation scores were logged with it (which point wins: tests/test_features.py)
    grid = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/metamodel_validation_grid.csv")))
    assert sorted(zip(grid.C, grid.negative_ratio)) == [(c, r) for c in (0.01, 0.1, 1.0, 10.0) for r in (2, 5, 10)]
    logged = run.data.metrics
    chosen = grid[np.isclose(grid.auc, logged["validation_auc"], rtol=1e-12, atol=0)
                  & np.isclose(grid.log_loss, logged["validation_log_loss"], rtol=1e-12, atol=0)]
    assert len(chosen) == 1
    assert (chosen.C.item(), chosen.negative_ratio.item()) == (logged["chosen_C"], logged["chosen_negative_ratio"])
    features = len(mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/metamodel_coefficients.json")) - 1
    assert features == 5 + 3 + 5  # five recommenders' scores (no BPR by default), three signals, five ranks
    # the fallback list's model: popularity and the two signals that are the same for every user
    fallback = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/fallback_coefficients.json")
    assert set(fallback) == {"popularity", "days_open", "days_left", "rank_popularity", "intercept"}
    assert logged["fallback_validation_ndcg"] > 0
    version = mlflow.MlflowClient().get_model_version_by_alias("salerank-metamodel", "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    loaded = mlflow.sklearn.load_model("models:/salerank-metamodel@champion")
    assert loaded.predict_proba([[1.0] * features]).shape == (1, 2)
    root = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metamodel_reliability.png", "metamodel_reliability.csv", "metamodel_validation_grid.csv",
            "metamodel_calibration.csv"} <= root
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "tagger")}
    assert {"tagger/head.weights.h5", "tagger/tagger.json", "tagger/per_tag_metrics.json"} <= artifacts
    assert run.data.metrics["tagger_top1_accuracy"] > 0.9  # held-out fifth of the hand labels
    assert run.data.tags["tagger_version"].startswith("tagger-")


def test_night_is_recorded_in_mlflow_with_the_model_version_it_used(night, trained):
    result, out = night
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_version"] == result.model_version == "salerank-metamodel/1"
    assert run.data.tags["model_run_id"] == trained[0].mlflow_run_id
    assert len(run.data.tags["data_fingerprint"]) == 64
    assert run.data.metrics["metamodel.ndcg_at_10"] == pytest.approx(result.metrics.loc["metamodel", "ndcg@10"])
    assert {"seconds_load", "seconds_images", "seconds_score", "seconds_export",
            "seconds_publish"} <= set(run.data.metrics)


def test_manifest_lists_every_output_with_rows_and_checksums(spark, world, night):
    result, out = night
    name = f"run_date={world.last_date}"
    assert (out / "manifests" / name / "_SUCCESS").exists()
    manifest = json.loads((out / "manifests" / name / "manifest.json").read_text())
    assert manifest["model"]["name"] == "salerank-metamodel" and manifest["model"]["version"] == "1"
    assert manifest["model"]["alias"] == "champion" and len(manifest["data_fingerprint"]) == 64
    assert manifest["active_users"] == result.active_users
    outputs = manifest["outputs"]
    assert outputs[f"recommendations/{name}"]["rows"] == result.rows
    assert {f"image_tags/{name}", f"themes/{name}/sale_themes", f"themes/{name}/theme_tags",
            f"exports/{name}/meta-vs-pop/control.jsonl", f"exports/{name}/meta-vs-pop/treatment.jsonl"
            } <= set(outputs)
    for path in (f"reports/{name}/index.html", f"exports/{name}/meta-vs-pop/manifest.json"):
        content = (out / path).read_bytes()
        assert outputs.pop(path) == {"bytes": len(content), "checksum": f"sha256:{hashlib.sha256(content).hexdigest()}"}
    assert (out / "reports" / name / "index.html").stat().st_size > 10_000  # photos and tables, not an error page
    for path, entry in outputs.items():  # the datasets: rows and content checksum of what was published
        published = spark.read.text(str(out / path)) if path.endswith(".jsonl") else spark.read.parquet(str(out / path))
        rows, checksum = content_checksum(published)
        assert entry == {"rows": rows, "checksum": checksum} and checksum.startswith("xxhash64-sum:"), path
    assert not list((out / "_staging").iterdir())


def test_ab_exports_split_users_by_salted_hash(world, night, night_config):
    result, out = night
    folder = out / "exports" / f"run_date={world.last_date}" / "meta-vs-pop"
    lines = {v: [json.loads(line) for line in (folder / f"{v}.jsonl").read_text().splitlines()]
             for v in ("control", "treatment")}
    experiment = parse_experiments(night_config, ["metamodel", "popularity"])[0]
    users = {v: [line["user_id"] for line in rows] for v, rows in lines.items()}
    assert sorted(users["control"] + users["treatment"]) == sorted(result.rankings.user_id.unique())
    for variant, ids in users.items():
        assert ids == sorted(ids) and all(variant_of(experiment, u) == variant for u in ids)
    assert 0.65 < len(users["treatment"]) / result.active_users < 0.85  # weights 1:3
    ranked = result.rankings.set_index(["strategy", "user_id"]).sort_index()
    for variant, strategy in (("control", "popularity"), ("treatment", "metamodel")):
        line = lines[variant][0]
        assert line["experiment"] == "meta-vs-pop" and line["variant"] == variant
        assert line["strategy"] == strategy and line["run_date"] == str(world.last_date)
        expected = ranked.loc[(strategy, line["user_id"])].sort_values("rank")
        assert [r["position"] for r in line["recommendations"]] == list(range(1, 11))
        assert [r["sale_id"] for r in line["recommendations"]] == expected.sale_id.tolist()
    assert lines["treatment"][0]["model_version"] == "salerank-metamodel/1"
    assert "model_version" not in lines["control"][0] and lines["control"][0]["strategy"] == "popularity"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_version"] == "salerank-metamodel/1" and manifest["salt"] == "test"
    assert {v: m["users"] for v, m in manifest["variants"].items()} == {v: len(u) for v, u in users.items()}
    assert manifest["variants"]["treatment"]["strategy"] == "metamodel"


def test_photos_are_tagged_with_their_scenes_and_themes_published(spark, world, night):
    result, out = night
    night_dir = f"run_date={world.last_date}"
    tags = pd.read_parquet(out / "image_tags" / night_dir)
    assert list(tags.columns) == ["sale_id", "image_path", "tag", "probability", "rank", "tagger_version"]
    assert set(tags.image_path) == set(world.sale_images.image_path)
    assert tags.groupby("image_path")["rank"].apply(sorted).map(lambda r: r == [1, 2, 3, 4, 5]).all()
    # the head was trained on the hand labels: its top tag is the photo's true scene
    top = tags[tags["rank"] == 1].merge(world.photo_scenes, on="image_path")
    assert (top.tag == top.theme).mean() > 0.9
    sale_themes = pd.read_parquet(out / "themes" / night_dir / "sale_themes")
    theme_tags = pd.read_parquet(out / "themes" / night_dir / "theme_tags")
    assert set(sale_themes.sale_id) == set(world.sales.sale_id)
    assert theme_tags.theme.nunique() == 8 and (theme_tags.weight >= 0).all()


def test_rerun_of_a_night_is_identical_and_reuses_the_image_cache(world, world_dir, night, conf_file, caplog,
                                                                   tmp_path, monkeypatch):
    """The re-run (in a copy of the night's OUT) is given file:// URIs from another working
    directory: the same night."""
    out = copy_of_night(night, tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = f"recommendations/run_date={world.last_date}"
    manifest = out / "manifests" / f"run_date={world.last_date}" / "manifest.json"
    first_manifest = manifest.read_bytes()
    first = pd.read_parquet(out / relative).sort_values(["user_id", "rank"]).reset_index(drop=True)
    with caplog.at_level("INFO", logger="salerank"):
        code = main(["nightly", "--data", (world_dir / "data").as_uri(), "--date", str(world.last_date),
                     "--out", out.as_uri(), "--conf", conf_file.as_uri()])
    assert code == 0
    assert f"0 of {world.sale_images.image_path.nunique()} photos to tag, the others from the cache" in caplog.text
    again = pd.read_parquet(out / relative).sort_values(["user_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)
    assert manifest.read_bytes() == first_manifest  # same rows, checksums, model, config, data


def published_files(out, day) -> dict:
    """Every published file of the night ``day``, by path, with its bytes."""
    return {str(path.relative_to(out)): path.read_bytes()
            for part in ("recommendations", "exports", "image_tags", "themes", "manifests")
            for path in sorted((out / part / f"run_date={day}").rglob("*")) if path.is_file()}


def test_a_night_killed_mid_way_leaves_the_published_night_and_the_next_run_completes(
        world, world_dir, night, conf_file, tmp_path):
    out = copy_of_night(night, tmp_path)
    before = published_files(out, world.last_date)
    assert any(name.endswith("_SUCCESS") for name in before)
    args = ["nightly", "--data", str(world_dir / "data"), "--date", str(world.last_date),
            "--out", str(out), "--conf", str(conf_file)]
    job = subprocess.Popen([sys.executable, "-c", "import sys; from salerank.jobs.cli import main; "
                            "sys.exit(main(sys.argv[1:]))", *args],
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / "_staging"
    deadline = time.monotonic() + 600
    # kill it (Python and its JVM) as soon as it starts writing the night's recommendations
    while not list(staging.glob(f"run_date={world.last_date}-*/recommendations")):
        assert job.poll() is None, "the job ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    assert published_files(out, world.last_date) == before  # not a byte changed
    assert list(staging.iterdir())  # what it had staged is still there, unpublished

    assert main(args) == 0  # the next run clears it and completes
    assert not list(staging.iterdir())
    after = published_files(out, world.last_date)
    manifest = f"manifests/run_date={world.last_date}/manifest.json"
    assert after[manifest] == before[manifest] and f"manifests/run_date={world.last_date}/_SUCCESS" in after


def test_nightly_without_a_registered_model_says_how_to_train_one(world, world_dir, conf_file, tmp_path, capsys):
    code = main(["nightly", "--data", str(world_dir / "data"), "--date", str(world.last_date),
                 "--out", str(tmp_path), "--conf", str(conf_file)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no version of the registered model 'salerank-metamodel' carries the alias 'champion'" in err
    assert "salerank train" in err
    assert not (tmp_path / "recommendations").exists() and not (tmp_path / "manifests").exists()


def test_a_model_trained_with_other_features_is_refused(world, world_dir, store_config, tmp_path, capsys):
    conf = tmp_path / "noimages.yaml"
    conf.write_text(yaml.safe_dump({"image_labelling": {"enabled": False}, "mlflow": store_config["mlflow"]}))
    code = main(["nightly", "--data", str(world_dir / "data"), "--date", str(world.last_date),
                 "--out", str(tmp_path / "out"), "--conf", str(conf)])
    err = capsys.readouterr().err
    assert code == 2 and "needs the features ['image_themes', 'rank_image_themes']" in err
    assert not (tmp_path / "out" / "manifests").exists()


def _sorted(frame, by):
    return frame.sort_values(by).reset_index(drop=True)


def test_labels_added_after_training_change_nothing_in_the_night(spark, world, world_dir, night, night_config,
                                                                  trained, tmp_path):
    """The night computes its image features with the champion's tagger and themes, registered
    by training: hand labels added since (a new tag on a batch of photos, others relabelled as
    another scene) change no tag, theme or recommendation of the night. Another OUT, so no image
    cache: every photo is tagged afresh, by the pinned tagger; the same MLflow store."""
    baseline, out = night
    data = shutil.copytree(world_dir / "data", tmp_path / "data", ignore=shutil.ignore_patterns("images"))
    (data / "images").symlink_to(world_dir / "data" / "images")
    labels = pd.read_csv(data / "image_labels.csv")
    scenes = sorted(labels.tag.unique())
    unlabelled = sorted(set(world.sale_images.image_path) - set(labels.image_path))[:60]
    flipped = labels.iloc[:40].assign(tag=lambda f: [scenes[(scenes.index(t) + 1) % len(scenes)] for t in f.tag])
    added = pd.concat([flipped, labels.iloc[40:], pd.DataFrame({"image_path": unlabelled, "tag": "lighthouse"})])
    added.to_csv(data / "image_labels.csv", index=False)
    assert len(unlabelled) == 60 and (flipped.tag != labels.iloc[:40].tag).all()
    config = with_store(night_config, out)

    result = run_nightly(spark, str(data), world.last_date, str(tmp_path / "out"), config)
    assert result.model_version == baseline.model_version == "salerank-metamodel/1"
    night_dir = f"run_date={world.last_date}"
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    training = mlflow.get_run(trained[0].mlflow_run_id).data.tags
    tags = {name: _sorted(pd.read_parquet(root / "image_tags" / night_dir), ["image_path", "rank"])
            for name, root in (("baseline", out), ("added", tmp_path / "out"))}
    assert set(tags["added"].tagger_version) == {training["tagger_version"]}  # not a tagger of the new labels
    assert "lighthouse" not in set(tags["added"].tag) and len(tags["added"]) == len(tags["baseline"]) > 0
    pd.testing.assert_frame_equal(tags["added"].drop(columns="probability"), tags["baseline"].drop(columns="probability"))
    np.testing.assert_allclose(tags["added"].probability, tags["baseline"].probability, rtol=0, atol=1e-6)
    for table, by in (("sale_themes", ["sale_id", "theme"]), ("theme_tags", ["theme", "rank"])):
        got, expected = (_sorted(pd.read_parquet(root / "themes" / night_dir / table), by)
                         for root in (tmp_path / "out", out))
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6)
    night_run = mlflow.get_run(result.mlflow_run_id).data.tags
    assert night_run["themes_version"] == training["themes_version"] and night_run["tagger_version"] == training[
        "tagger_version"]
    recommendations = {name: _sorted(pd.read_parquet(root / "recommendations" / night_dir), ["user_id", "rank"])
                       for name, root in (("baseline", out), ("added", tmp_path / "out"))}
    pd.testing.assert_frame_equal(recommendations["added"], recommendations["baseline"], check_exact=False, rtol=1e-9)


def test_a_champion_without_its_tagger_and_themes_is_refused(world, world_dir, night, night_config, conf_file,
                                                             tmp_path, capsys):
    """A version registered without them (an older salerank), one whose run lacks them, and one
    whose run holds others than its metadata names: each night exits 2, saying to retrain."""
    from salerank.jobs.image_artefacts import METADATA_KEY, TAGGER_DIR, THEMES_FILE, pinned_artefacts
    from salerank.jobs.registry import _load_version, register_metamodel
    from salerank.jobs.tracking import start_run

    _, out = night
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    holder = mlflow.MlflowClient().get_model_version_by_alias("salerank-metamodel", "champion")
    champion, metadata = _load_version("salerank-metamodel", holder, "champion")
    pinned = metadata[METADATA_KEY]
    tagger_dir, themes_file = (mlflow.artifacts.download_artifacts(
        run_id=holder.run_id, artifact_path=path, dst_path=str(tmp_path / "artefacts")) for path in (TAGGER_DIR, THEMES_FILE))
    elsewhere = tmp_path / "out"
    cases = [(None, False, "was registered without the tagger and themes of its image features"),
             (pinned, False, "the tagger and themes of its image features cannot be read from its run"),
             ({**pinned, "themes_version": "themes-000000000000"}, True,
              "was registered with themes_version themes-000000000000, but its run"),
             (pinned, True, None)]
    for images, logged, message in cases:
        with start_run(night_config, str(elsewhere), run_name="register"):
            if logged:
                mlflow.log_artifacts(tagger_dir, TAGGER_DIR)
                mlflow.log_artifact(themes_file, THEMES_FILE.rsplit("/", 1)[0])
            registered = register_metamodel(champion.model, night_config, "champion", images)
        if message is None:  # the same artefacts, registered as training does: they load
            found = pinned_artefacts(registered, "efficientnet-lite0").metadata()
            assert {k: found[k] for k in pinned} == pinned
            continue
        code = main(["nightly", "--data", str(world_dir / "data"), "--date", str(world.last_date),
                     "--out", str(elsewhere), "--conf", str(conf_file)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "salerank train" in err and "Traceback" not in err, err
        assert not (elsewhere / "manifests").exists()


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


def test_corrupt_and_missing_photos_are_named_skipped_and_the_night_completes(
        world, world_dir, night, store_conf_file, tmp_path, capsys, caplog):
    out = own_out(night, tmp_path)
    data = shutil.copytree(world_dir / "data", tmp_path / "data")
    images = sorted(world.sale_images.image_path)
    corrupt, missing = images[0], images[1]
    (data / corrupt).write_bytes(b"this is not a JPEG")
    (data / missing).unlink()
    day = world.last_date - dt.timedelta(days=2)
    with caplog.at_level("WARNING", logger="salerank"):
        code = main(["nightly", "--data", str(data), "--date", str(day), "--out", str(out),
                     "--conf", str(store_conf_file)])
    assert code == 0 and "Traceback" not in capsys.readouterr().err
    assert f"image skipped: {corrupt}" in caplog.text and f"image skipped: {missing}" in caplog.text
    assert (out / "manifests" / f"run_date={day}" / "_SUCCESS").exists()
    tagged = set(pd.read_parquet(out / "image_tags" / f"run_date={day}").image_path)
    assert tagged == set(images) - {corrupt, missing}


def test_without_purchases_to_evaluate_only_the_needed_strategies_are_ranked(
        spark, world, world_dir, night, store_config, tmp_path):
    """In production the run date's purchases are not in yet: a single recommender's own
    top-k is then computed only when an experiment shows it (here popularity)."""
    out = own_out(night, tmp_path)
    day = world.last_date - dt.timedelta(days=3)
    data = shutil.copytree(world_dir / "data", tmp_path / "data", ignore=shutil.ignore_patterns("images"))
    (data / "images").symlink_to(world_dir / "data" / "images")
    purchases = pd.read_csv(data / "purchases.csv")
    purchases[purchases.ts < str(day)].to_csv(data / "purchases.csv", index=False)
    result = run_nightly(spark, str(data), day, str(out), store_config, keep_rankings=False)
    hand = night_by_hand(world, day)  # the purchases before the day are the world's
    assert result.metrics is None and result.active_users == len(hand["active"]) and result.rows == hand["rows"]
    page = (out / "reports" / f"run_date={day}" / "index.html").read_text()
    assert "popularity #" in page and "item_cf #" not in page and "content #" not in page
    folder = out / "exports" / f"run_date={day}" / "meta-vs-pop"
    assert (folder / "control.jsonl").read_text() and (folder / "treatment.jsonl").read_text()


def test_night_without_open_sales_or_active_users_publishes_an_empty_output(spark, world, world_dir, store_config,
                                                                             night, tmp_path):
    out = own_out(night, tmp_path)
    later = world.last_date + dt.timedelta(days=20)  # every sale has closed; users still active
    # 20 days after the last event: a stalled feed, unless allowed
    result = run_nightly(spark, str(world_dir / "data"), later, str(out), {**store_config, "max_data_lag_days": None})
    hand = night_by_hand(world, later)  # active: an event in the 10 days before the world's last day
    assert hand["open"] == set() and len(hand["active"]) > 0
    assert result.open_sales == 0 and result.active_users == len(hand["active"]) and result.rows == 0
    empty = spark.read.parquet(result.output)
    assert empty.count() == 0 and "model_version" in empty.columns
    exports = out / "exports" / f"run_date={later}" / "meta-vs-pop"
    assert (exports / "control.jsonl").read_text() == "" and (exports / "treatment.jsonl").read_text() == ""
    assert (exports / "fallback.jsonl").read_text() == ""  # no open sale, no list for anyone
    assert spark.read.parquet(str(out / "fallback" / f"run_date={later}")).count() == 0
    assert (out / "manifests" / f"run_date={later}" / "_SUCCESS").exists()

    first = world.sales.open_date.min()  # sales open, but nobody has done anything yet
    result = run_nightly(spark, str(world_dir / "data"), dt.date.fromisoformat(str(first)), str(out), store_config)
    hand = night_by_hand(world, dt.date.fromisoformat(str(first)))
    assert hand["active"] == set() and len(hand["open"]) > 0
    assert result.active_users == 0 and result.open_sales == len(hand["open"]) and result.rows == 0
    assert (out / "manifests" / f"run_date={first}" / "_SUCCESS").exists()
    assert (out / "exports" / f"run_date={first}" / "meta-vs-pop" / "treatment.jsonl").read_text() == ""


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as caught:
        main(["nightly", "--data", "x", "--date", "2025-02-30", "--out", "y"])
    assert caught.value.code == 2


def test_ab_report_measures_a_planted_uplift(world, world_dir, night, tmp_path, capsys):
    """Plant purchases after the night: treatment users buy twice as often as control users.
    The report must count exactly what a direct computation counts (a fixed 7-day window from
    each user's first exposure), find the uplift, and see no sample-ratio mismatch (the split
    follows the 1:3 weights). The report reads an OUT where this night is the only one
    published (its exports and manifest, copied): whatever other tests publish."""
    out = tmp_path / "out"
    for part in ("exports", "manifests"):
        shutil.copytree(night[1] / part / f"run_date={world.last_date}", out / part / f"run_date={world.last_date}")
    folder = out / "exports" / f"run_date={world.last_date}" / "meta-vs-pop"
    exposed = {json.loads(line)["user_id"]: variant for variant in ("control", "treatment")
               for line in (folder / f"{variant}.jsonl").read_text().splitlines()}
    rng = np.random.default_rng(3)
    day = world.last_date.isoformat()
    open_sales = world.sales.query("open_date <= @day and close_date >= @day")
    planted = [{"user_id": user, "sale_id": open_sales.sale_id.iloc[rng.integers(len(open_sales))],
                "ts": f"{world.last_date + dt.timedelta(days=int(rng.integers(1, 10)))} 12:00:00",
                "amount": float(rng.integers(50, 500))}
               for user, variant in sorted(exposed.items())
               if rng.random() < (0.5 if variant == "treatment" else 0.25)]
    data = tmp_path / "data"
    data.mkdir()
    for name in world.tables:
        (data / f"{name}.csv").write_bytes((world_dir / "data" / f"{name}.csv").read_bytes())
    purchases = pd.concat([pd.read_csv(data / "purchases.csv"), pd.DataFrame(planted)])
    purchases.to_csv(data / "purchases.csv", index=False)

    assert main(["ab", "report", "--data", str(data), "--out", str(out), "--experiment", "meta-vs-pop",
                 "--window-days", "7"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "ab_reports" / "meta-vs-pop.json").read_text())

    # the direct computation: each exported user's purchases over the 7 days from the night (their
    # first and only exposure), every user's 7 days covered by the data (its newest visit or purchase)
    through = max(pd.to_datetime(purchases.ts).max(), pd.to_datetime(world.visits.ts).max()).date()
    assert through >= world.last_date + dt.timedelta(days=6)
    when = pd.to_datetime(purchases.ts).dt.date
    counted = purchases[(when >= world.last_date) & (when < world.last_date + dt.timedelta(days=7))]
    for variant in ("control", "treatment"):
        users = [u for u, v in exposed.items() if v == variant]
        mine = counted[counted.user_id.isin(users)]
        got = report["variants"][variant]
        assert got["users"] == len(users)
        assert got["conversion"] == pytest.approx(mine.user_id.nunique() / len(users))
        assert got["revenue_per_user"] == pytest.approx(mine.amount.sum() / len(users))
    uplift = report["variants"]["treatment"]["uplift"]["conversion"]
    assert uplift["low"] > 0  # twice the planted rate is found
    assert not report["sample_ratio"]["mismatch"] and report["nights"] == [day]
    assert "conversion uplift" in printed and "sample ratio" in printed


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_night_report_renders_in_a_real_browser(spark, world, night):
    """The HTML report, opened in headless Chromium: every photo decodes, each sampled user
    shows the published top 10 in order, and the themes table shows the 8 scene themes."""
    from playwright.sync_api import sync_playwright

    result, out = night
    page_file = out / "reports" / f"run_date={world.last_date}" / "index.html"
    published = pd.read_parquet(out / "recommendations" / f"run_date={world.last_date}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        assert page.title() == f"salerank night {world.last_date}"
        images = page.eval_on_selector_all("img.photo", "els => els.map(e => [e.complete, e.naturalWidth])")
        assert len(images) > 100 and all(done and width > 0 for done, width in images)
        assert page.locator(".photo.missing").count() == 0
        themes = page.locator("tr.theme")
        assert themes.count() == 8
        assert all(themes.nth(i).locator("img.photo").count() == 3 for i in range(8))
        users = page.locator("section.user")
        assert users.count() == 20
        for i in range(users.count()):
            section = users.nth(i)
            user = section.get_attribute("data-user")
            shown = section.locator("li.rec").evaluate_all(
                "els => els.map(e => [Number(e.dataset.position), e.dataset.sale])")
            expected = published[published.user_id == user].sort_values("rank")
            assert shown == [[int(r), s] for r, s in zip(expected["rank"], expected.sale_id)]
            assert section.locator("li.event").count() >= 1  # active users have history
            drivers = section.locator(".drivers").all_inner_texts()
            assert len(drivers) == 10 and all(t.startswith("themes: ") for t in drivers)
        assert page.locator("table.summary").inner_text().count(result.model_version) == 1
        browser.close()


def test_visual_similarity_ranks_and_publishes_the_nearest_open_sales_by_photo(
        spark, world, world_dir, night, night_config, tmp_path):
    """With image_labelling.visual_similarity the model gains the visual recommender, and the
    night publishes each open sale's most similar open sales: their cosines recomputed from the
    cached embeddings, and by the world's truth mostly sales showing the same scene."""
    from salerank.image_labelling.stage import sale_embeddings

    out = own_out(night, tmp_path)  # photos are tagged already, embeddings included
    config = {**night_config, "image_labelling": {**night_config["image_labelling"], "visual_similarity": True},
              # a shorter training window: this test is about the similar sales, not the model's quality
              "metamodel": {**night_config["metamodel"], "train_days": 4, "validation_days": 2}}
    run_training(spark, str(world_dir / "data"), world.last_date, str(out), config, alias="champion")
    result = run_nightly(spark, str(world_dir / "data"), world.last_date, str(out), config)
    assert result.rows == night[0].rows
    similar = spark.read.parquet(str(out / "similar_sales" / f"run_date={world.last_date}")).toPandas()
    open_sales = night_by_hand(world, world.last_date)["open"]
    assert set(similar.sale_id) == open_sales and (similar.groupby("sale_id").size() == 10).all()
    assert not (similar.sale_id == similar.similar_sale_id).any()
    # the cosines of the embeddings in the cache, per sale the mean of its photos'
    photos = world.sale_images.merge(world.photo_scenes, on="image_path")
    cache = spark.read.parquet(str(out / "image_cache")).filter("embedding is not null").toPandas()
    hashes = {p: hashlib.sha256((world_dir / "data" / p).read_bytes()).hexdigest() for p in photos.image_path}
    rows = photos.assign(content_hash=photos.image_path.map(hashes)).merge(
        cache[["content_hash", "embedding"]].drop_duplicates("content_hash"), on="content_hash")
    vectors = sale_embeddings(rows[["sale_id", "image_path", "embedding"]])
    cosine = (vectors.loc[similar.sale_id].to_numpy() * vectors.loc[similar.similar_sale_id].to_numpy()).sum(axis=1)
    np.testing.assert_allclose(similar.similarity, cosine, atol=1e-5)  # float32 in the catalogue
    # sales whose photos all show one scene: the nearest mostly shows that scene too (chance 1/8)
    scenes = photos.groupby("sale_id").theme.agg(lambda t: t.iloc[0] if t.nunique() == 1 else None).dropna()
    first = similar[(similar["rank"] == 1) & similar.sale_id.isin(scenes.index)
                    & similar.similar_sale_id.isin(scenes.index)]
    assert len(first) > 20 and (first.sale_id.map(scenes) == first.similar_sale_id.map(scenes)).mean() > 0.6
