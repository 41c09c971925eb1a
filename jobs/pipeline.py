"""The nightly pipeline: the one place that wires the stages together.

Each stage is a plain function from named inputs to named outputs (``load_tables``,
``training_examples``, ``train_metamodel``, ``score_users``, ``publish_parquet``,
``ranking_metrics``); this module only decides which stage reads what, times them and
records the run in MLflow.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .. import recommenders as recs
from ..conf import flatten
from ..features.history import Catalog, ScoringContext, purchases_on
from ..features.themes import fit_themes
from ..image_labelling.stage import tag_images
from ..features.loading import load_tables
from ..metamodel.evaluation import ranking_metrics
from ..metamodel.ranking import METAMODEL, RANKING_SCHEMA, RankTopK
from ..metamodel.features import signals_from_config
from ..metamodel.model import signed_log1p
from ..metamodel.training import TrainingDataError, feature_names, train_metamodel, training_examples
from ..recommenders.scoring import score_users
from .publish import publish_parquet
from .tracking import start_run

log = logging.getLogger("salerank")

RECOMMENDATIONS_SCHEMA = "user_id string, rank int, sale_id string, score double, model_version string"


@dataclass
class NightlyResult:
    run_date: dt.date
    output: str
    rows: int
    active_users: int
    open_sales: int
    model_version: str | None
    metrics: pd.DataFrame | None  # per strategy, against purchases on the run date
    timings: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    rankings: pd.DataFrame | None = None  # every strategy's top-k, when asked for


class Stages:
    """Times each stage, logs it to the console and keeps the figures for MLflow."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        log.info("stage %s done in %.1f s", name, self.seconds[name])


def recommendations_path(out_dir: str, run_date: dt.date) -> str:
    return str(Path(out_dir) / "recommendations" / f"run_date={run_date.isoformat()}")


def run_nightly(spark: SparkSession, data_dir: str, run_date: dt.date, out_dir: str,
                config: dict, keep_rankings: bool = False) -> NightlyResult:
    """Recommend, for every user active before ``run_date``, the top sales open on it.

    ``keep_rankings`` also returns every strategy's top-k (the meta-model and each
    recommender alone) as pandas: for small worlds, tests and the demo.
    """
    stages = Stages()
    with start_run(config, out_dir, run_name=f"nightly {run_date}") as run:
        mlflow.log_params({**flatten(config), "data_dir": str(data_dir), "run_date": str(run_date)})
        with stages("load"):
            tables = load_tables(spark, data_dir)
            for warning in tables.warnings:
                log.warning("data warning: %s", warning)
            catalog = Catalog.from_tables(spark, tables)
        with_images = bool(config["image_labelling"]["enabled"] and tables.row_counts.get("sale_images"))
        if with_images:
            with stages("images"):
                catalog = catalog.with_themes(run_image_stage(tables, data_dir, out_dir, run_date, config))
        context = ScoringContext.build(tables, catalog, run_date)
        active = context.active_users(config["active_lookback_days"]).cache()
        n_active, n_open = active.count(), len(context.open_idx)
        mlflow.set_tags({"data_fingerprint": tables.fingerprint, "run_date": str(run_date)})
        mlflow.log_metrics({f"rows_{name}": float(n) for name, n in tables.row_counts.items()})
        mlflow.log_metrics({"active_users": float(n_active), "open_sales": float(n_open)})
        log.info("%d active users, %d sales open on %s", n_active, n_open, run_date)
        model, metrics, rankings = None, None, None
        prototypes = recs.from_config(config, with_images=with_images)
        output = recommendations_path(out_dir, run_date)
        if n_active and n_open:
            with stages("train"):
                model = _train(tables, catalog, prototypes, run_date, config)
            with stages("score"):
                ranked = rank_users(context, prototypes, model, active, config).cache()
            recommendations = (ranked.filter(F.col("strategy") == METAMODEL)
                               .select("user_id", "rank", "sale_id", "score",
                                       F.lit(model.version_).alias("model_version")))
        else:
            log.warning("nothing to rank on %s (%d active users, %d open sales): publishing an "
                        "empty output", run_date, n_active, n_open)
            recommendations = spark.createDataFrame([], RECOMMENDATIONS_SCHEMA)
        with stages("publish"):
            rows = publish_parquet(recommendations, output)
        log.info("published %d recommendations to %s", rows, output)
        if model is not None:
            with stages("evaluate"):
                metrics = _evaluate(tables, catalog, context, ranked, config["top_k"])
            if keep_rankings:
                rankings = ranked.toPandas()
            ranked.unpersist()
        active.unpersist()
        mlflow.log_metrics({f"seconds_{name}": s for name, s in stages.seconds.items()})
        return NightlyResult(run_date, output, rows, n_active, n_open,
                             model.version_ if model else None, metrics, stages.seconds,
                             run.info.run_id, rankings)


def run_image_stage(tables, data_dir, out_dir, run_date, config) -> pd.DataFrame:
    """Tag the photos (cached by content and model version), publish the tags and the
    themes of the night, and return each sale's theme weights."""
    spark = tables.sales.sparkSession
    cache_path = str(Path(out_dir) / "image_cache")
    cache = spark.read.parquet(cache_path) if Path(cache_path).exists() else None
    result = tag_images(tables.sale_images, tables.image_labels, str(data_dir), cache, config, config["seed"])
    for path, reason in result.failures[:20]:
        log.warning("image skipped: %s: %s", path, reason)
    if len(result.failures) > 20:
        log.warning("... and %d more images skipped", len(result.failures) - 20)
    night = f"run_date={run_date.isoformat()}"
    publish_parquet(result.tags, str(Path(out_dir) / "image_tags" / night))
    tags = result.tags.toPandas()
    publish_parquet(result.cache, cache_path)  # after the last read of the old cache
    mlflow.set_tag("tagger_version", result.model_version)
    mlflow.log_metric("images_skipped", float(len(result.failures)))
    if result.metrics:
        mlflow.log_metrics({f"tagger_{k}": v for k, v in result.metrics.items() if k != "per_tag"})
        mlflow.log_dict(result.metrics["per_tag"], "tagger/per_tag_metrics.json")
    if result.tagger is not None:
        _log_tagger(result.tagger, config)
    if tags.empty:
        raise TrainingDataError("no sale photo could be tagged: see the skipped images above")
    themes = fit_themes(tags, config["image_labelling"]["themes"], config["seed"])
    long = themes.sale_themes.reset_index().melt(id_vars="sale_id", var_name="theme", value_name="weight")
    base = Path(out_dir) / "themes" / night
    publish_parquet(spark.createDataFrame(long[long["weight"] > 0]), str(base / "sale_themes"))
    publish_parquet(spark.createDataFrame(themes.theme_tags), str(base / "theme_tags"))
    examples = (tags.drop_duplicates("sale_id").set_index("sale_id")["image_path"])
    table = themes.theme_tags.groupby("theme")["tag"].apply(" ".join).to_frame("top_tags")
    table["example_images"] = [" ".join(examples.reindex(themes.sale_themes[t].nlargest(3).index).dropna())
                               for t in table.index]
    mlflow.log_text(table.to_csv(), "themes.csv")
    mlflow.sklearn.log_model(themes.model, name="themes_nmf", pip_requirements=["scikit-learn"])
    log.info("%d themes: %s", len(themes.names), ", ".join(themes.names))
    return themes.sale_themes


def _log_tagger(tagger, config) -> None:
    """The tagger's head (Keras weights), its tags and backbone, as MLflow artifacts."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "head.weights.h5"
        tagger.head_.save_weights(weights)
        mlflow.log_artifact(str(weights), "tagger")
    mlflow.log_dict({"version": tagger.version_, "backbone": config["image_labelling"]["backbone"],
                     "tags": tagger.tags_, "positive_weight": tagger.positive_weight_.tolist()},
                    "tagger/tagger.json")


def _candidates(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def fit_metamodel(tables, catalog, prototypes, as_of, config, cache: dict | None = None):
    """The meta-model for ``as_of``, trained on the days before it: the model, its metrics
    and the tuning report (validation grid, reliability table)."""
    settings = config["metamodel"]
    scorers = prototypes + signals_from_config(config)
    ranked = tuple(r.name for r in prototypes) if settings["ranks"] else ()
    examples = training_examples(tables, catalog, scorers, as_of, settings["train_days"],
                                 settings["negatives_per_purchase"], config["seed"],
                                 config["spark"]["scoring_partitions"], cache, ranked)
    model, metrics, report = train_metamodel(
        examples, feature_names(scorers, ranked), ranked, _candidates(settings["C"]),
        _candidates(settings["negative_ratios"]), settings["validation_days"])
    log.info("meta-model %s trained on %d examples: %s", model.version_, len(examples),
             ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return model, metrics, report


def rank_users(context, prototypes, model, users, config):
    """Every strategy's top-k open sales for ``users`` (RANKING_SCHEMA): the meta-model's
    and each recommender's alone, fitted on ``context``."""
    fitted = recs.fit_all(prototypes + signals_from_config(config), context)
    strategies = (METAMODEL, *[r.name for r in prototypes])
    return score_users(context, fitted, users, RankTopK(model, config["top_k"], strategies),
                       RANKING_SCHEMA, config["spark"]["scoring_partitions"])


def _train(tables, catalog, prototypes, run_date, config):
    model, metrics, report = fit_metamodel(tables, catalog, prototypes, run_date, config)
    mlflow.log_metrics(metrics)
    if report["grid"]:
        mlflow.log_text(pd.DataFrame(report["grid"]).to_csv(index=False), "metamodel_validation_grid.csv")
    if "reliability" in report:
        mlflow.log_text(report["reliability"].to_csv(), "metamodel_reliability.csv")
        mlflow.log_figure(reliability_figure(report["reliability"]), "metamodel_reliability.png")
    mlflow.set_tag("model_version", model.version_)
    mlflow.log_dict(model.coefficients_, "metamodel_coefficients.json")
    mlflow.sklearn.log_model(model.pipeline_, name="metamodel",
                             pip_requirements=["scikit-learn", "numpy", "salerank"],
                             skops_trusted_types=[f"{signed_log1p.__module__}.signed_log1p"])
    return model


def reliability_figure(table: pd.DataFrame):
    """The reliability curve: observed purchase rate against mean predicted probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axis.plot(table["predicted"], table["observed"], marker="o", label="meta-model")
    for x, y, n in zip(table["predicted"], table["observed"], table["examples"]):
        axis.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("predicted purchase probability (sampled negatives)")
    axis.set_ylabel("observed purchase rate")
    axis.set_title("Meta-model calibration on the validation days")
    axis.legend(fontsize=8)
    plt.close(figure)
    return figure


def _evaluate(tables, catalog, context, ranked, k) -> pd.DataFrame | None:
    """Score the night's rankings against the purchases made on the run date, if any."""
    bought = (purchases_on(tables, catalog, context.as_of).select("user_id", "sale_id").distinct()
              .join(ranked.select("user_id").distinct(), "user_id"))
    truth = bought.toPandas()
    if truth.empty:
        log.info("no purchases of open sales by active users on %s: no evaluation", context.as_of)
        return None
    recommended = ranked.join(bought.select("user_id").distinct(), "user_id").toPandas()
    # no revenue here: the quick evaluation's truth carries no amounts (the backtest's does)
    metrics = ranking_metrics(recommended, truth, k).drop(columns=f"revenue@{k}")
    log.info("evaluation against purchases on %s (%d users):\n%s", context.as_of,
             int(metrics["users"].iloc[0]), metrics.drop(columns="users").round(4).to_string())
    for strategy, row in metrics.iterrows():
        mlflow.log_metrics({f"{strategy}.{name.replace('@', '_at_')}": float(value)
                            for name, value in row.items() if name != "users"})
    mlflow.log_text(json.dumps(metrics.to_dict(orient="index"), indent=2), "evaluation.json")
    return metrics
