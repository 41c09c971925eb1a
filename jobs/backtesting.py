"""The rolling backtest: replay a range of dates as the nightly run would have seen them.

For each date D: the meta-model is trained on the days before D, every strategy (the
meta-model and each recommender alone) ranks the sales open on D for the evaluated users,
and the lists are compared with what those users bought in ``[D, D + truth_days)`` among
the sales open on D.  Everything a date's rankings use comes from
``ScoringContext.build(as_of=D)``, the same mechanism as the nightly run and training.

Outputs under OUT: ``metrics.json`` (overall, per breakdown and per day, for each model),
``recommendations/model=NAME/run_date=D/`` (each day's top-k in the nightly schema) and an
MLflow parent run with a child run per model and plots.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .. import recommenders as recs
from ..conf import flatten
from ..features.history import Catalog, ScoringContext
from ..features.loading import load_tables
from ..metamodel.evaluation import PER_USER, per_user_metrics
from ..metamodel.ranking import METAMODEL
from ..metamodel.training import TrainingDataError
from ..recommenders.scoring import released
from .lease import hold
from .pipeline import Stages, fit_metamodel, rank_users, run_image_stage
from .publish import publish_parquet
from ..storage import FileSystem, join
from .tracking import start_run, tracking_uri

log = logging.getLogger("salerank")

USER_SETS = ("active", "all")
SEGMENTS = ("overall", "new_sales", "established_sales", "new_users", "returning_users")


@dataclass
class BacktestResult:
    metrics: dict  # what metrics.json holds
    per_day: pd.DataFrame  # day, model, segment, metric columns, users
    output: str
    mlflow_run_id: str


def _dates(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def truth_window(tables, catalog: Catalog, day: dt.date, truth_days: int) -> pd.DataFrame:
    """Purchases in ``[day, day + truth_days)`` of the sales open on ``day``:
    ``user_id, sale_id, amount`` (the purchase's amount, else the sale's price, else 0)."""
    start = F.lit(day).cast("timestamp")
    end = F.lit(day + dt.timedelta(days=truth_days)).cast("timestamp")
    open_ids = [str(s) for s in catalog.sale_ids(catalog.open_on(day))]
    bought = (tables.purchases.filter((F.col("ts") >= start) & (F.col("ts") < end))
              .filter(F.col("sale_id").isin(open_ids)))
    amount = F.col("amount") if "amount" in tables.purchases.columns else F.lit(None).cast("double")
    truth = bought.select("user_id", "sale_id", amount.alias("amount")).toPandas()
    if "price" in catalog.sales.columns:
        price = catalog.sales.set_index("sale_id")["price"]
        truth["amount"] = truth["amount"].fillna(truth["sale_id"].map(price))
    truth["amount"] = truth["amount"].fillna(0.0).astype(float)
    return truth


def segment_truth(truth: pd.DataFrame, context: ScoringContext, new_sale_days: int) -> dict[str, pd.DataFrame]:
    """The truth restricted to each breakdown: sales in their first ``new_sale_days`` days on
    D or older; users who had never bought before D or who had."""
    sales = context.catalog.sales.set_index("sale_id")["open_date"]
    first_day = context.as_of - dt.timedelta(days=new_sale_days - 1)
    is_new_sale = truth["sale_id"].map(sales).ge(first_day)
    returning = pd.Series(False, index=truth.index)
    if len(truth):
        buyers = spark_frame(context.events, truth[["user_id"]].drop_duplicates())
        bought_before = (context.events.filter("bought").select("user_id").distinct()
                         .join(buyers, "user_id").toPandas()["user_id"])
        returning = truth["user_id"].isin(set(bought_before))
    return {"overall": truth, "new_sales": truth[is_new_sale], "established_sales": truth[~is_new_sale],
            "new_users": truth[~returning], "returning_users": truth[returning]}


def evaluated_users(context: ScoringContext, truth: pd.DataFrame, users: str, lookback_days: int):
    """The users ranked on D: the nightly run's active users, or (``all``) those and every
    buyer of the truth window, history or not."""
    active = context.active_users(lookback_days)
    if users == "active" or truth.empty:
        return active
    return active.unionByName(spark_frame(active, truth[["user_id"]].drop_duplicates())).distinct()


def run_backtest(spark: SparkSession, data_dir: str, start: dt.date, end: dt.date, out_dir: str,
                 config: dict, truth_days: int = 1, users: str = "active",
                 new_sale_days: int = 2, wait: bool = False) -> BacktestResult:
    """Replay every date of ``[start, end]``; see the module docstring. Holds the lease
    ``backtest`` of ``out_dir`` (``wait``: wait for its holder instead of raising
    ``LeaseHeldError``)."""
    if end < start:
        raise ValueError(f"the backtest ends ({end}) before it starts ({start})")
    if users not in USER_SETS:
        raise ValueError(f"users must be one of {USER_SETS}, not {users!r}")
    tracking_uri(config, out_dir)  # a remote OUT without a tracking store stops before any work
    k, stages = config["top_k"], Stages()
    with (hold(spark, out_dir, "backtest", config, wait=wait),
          start_run(config, out_dir, run_name=f"backtest {start}..{end}") as parent):
        mlflow.log_params({**flatten(config), "data_dir": str(data_dir), "start": str(start),
                           "end": str(end), "truth_days": truth_days, "users": users,
                           "new_sale_days": new_sale_days})
        with stages("load"):
            tables = load_tables(spark, data_dir)
            catalog = Catalog.from_tables(spark, tables)
        mlflow.set_tag("data_fingerprint", tables.fingerprint)
        with_images = bool(config["image_labelling"]["enabled"] and tables.row_counts.get("sale_images"))
        if with_images:
            with stages("images"):  # photos and labels are sale metadata, known before any date
                with hold(spark, out_dir, "image_cache", config, wait=True):  # shared with train, nightly
                    catalog = catalog.with_themes(run_image_stage(tables, data_dir, out_dir, config).sale_themes)
        prototypes = recs.from_config(config, with_images=with_images)
        examples_cache: dict = {}
        per_user, per_day_coverage, skipped = [], [], {}
        dates = _dates(start, end)
        for i, day in enumerate(dates, 1):
            log.info("backtest day %d of %d (%s)", i, len(dates), day)
            with stages(f"day {day}"):
                reason = _replay_day(tables, catalog, prototypes, day, out_dir, config, truth_days,
                                     users, new_sale_days, examples_cache, per_user, per_day_coverage)
            # the next date trains on the train_days days before it: older days are done with
            first = day + dt.timedelta(days=1 - config["metamodel"]["train_days"])
            for done in [d for d in examples_cache if d < first]:
                del examples_cache[done]
            if reason:
                skipped[str(day)] = reason
                log.warning("backtest %s skipped: %s", day, reason)
        per_user = pd.concat(per_user, ignore_index=True) if per_user else pd.DataFrame(
            columns=["day", "segment", "strategy", "user_id", *PER_USER])
        cover = pd.DataFrame(per_day_coverage, columns=["day", "strategy", "coverage"])
        metrics = _metrics_document(per_user, cover, k, start, end, truth_days, users,
                                    new_sale_days, skipped, [r.name for r in prototypes])
        per_day = _per_day_table(per_user, cover, k)
        target = join(out_dir, "metrics.json")  # a reader sees the old file or the whole new one
        FileSystem(spark, target).write_bytes(target, json.dumps(metrics, indent=2).encode())
        _log_to_mlflow(metrics, per_day, k)
        mlflow.log_metrics({f"seconds_{name.replace(' ', '_')}": s for name, s in stages.seconds.items()})
        return BacktestResult(metrics, per_day, str(out_dir), parent.info.run_id)


def _replay_day(tables, catalog, prototypes, day, out_dir, config, truth_days, users, new_sale_days,
                examples_cache, per_user, per_day_coverage) -> str | None:
    """Rank, publish and evaluate one date; the reason when it cannot be replayed."""
    context = ScoringContext.build(tables, catalog, day)
    if len(context.open_idx) == 0:
        return "no sales open"
    truth = truth_window(tables, catalog, day, truth_days)
    with released():  # the day's broadcast state goes with its frames, on failure as on success
        ranked_users = evaluated_users(context, truth, users, config["active_lookback_days"]).cache()
        try:
            if ranked_users.count() == 0:
                return "no users to rank"
            try:
                model, _, _ = fit_metamodel(tables, catalog, prototypes, day, config, examples_cache)
            except TrainingDataError as err:
                return f"meta-model not trainable: {err}"
            recommended, lists = _rank_and_publish(context, prototypes, model, ranked_users, truth,
                                                   out_dir, config)
        finally:
            ranked_users.unpersist()
    for strategy, sales in zip(lists["strategy"], lists["sales"]):
        per_day_coverage.append((day, strategy, sales / len(context.open_idx)))
    truth = truth[truth["user_id"].isin(set(recommended["user_id"]))]  # users ranked that day
    for segment, part in segment_truth(truth, context, new_sale_days).items():
        rows = per_user_metrics(recommended, part, config["top_k"])
        per_user.append(rows.assign(day=day, segment=segment))
    return None


def _rank_and_publish(context, prototypes, model, users, truth, out_dir, config):
    """Publish every strategy's top-k of ``users`` on the context's day; return (pandas) the
    rankings of the truth's buyers and the number of distinct sales each strategy listed."""
    ranked = rank_users(context, prototypes, model, users, config).cache()
    try:
        for strategy in (METAMODEL, *[r.name for r in prototypes]):
            version = model.version_ if strategy == METAMODEL else strategy
            publish_parquet(ranked.filter(F.col("strategy") == strategy).select(
                "user_id", "rank", "sale_id", "score", F.lit(version).alias("model_version")),
                join(out_dir, "recommendations", f"model={strategy}", f"run_date={context.as_of}"))
        buyers = spark_frame(ranked, truth[["user_id"]].drop_duplicates())
        recommended = ranked.join(buyers, "user_id").toPandas() if len(truth) else ranked.limit(0).toPandas()
        lists = ranked.groupBy("strategy").agg(F.countDistinct("sale_id").alias("sales")).toPandas()
    finally:
        ranked.unpersist()
    return recommended, lists


def spark_frame(like, frame: pd.DataFrame):
    """A small pandas frame as a Spark DataFrame (broadcast), on ``like``'s session."""
    schema = ", ".join(f"{c} string" for c in frame.columns)
    return F.broadcast(like.sparkSession.createDataFrame(frame.astype(str), schema))


def overall_table(metrics: dict) -> pd.DataFrame:
    """The overall metrics of a backtest, one row per model."""
    return pd.DataFrame({model: entry["overall"] for model, entry in metrics["models"].items()}).T


def _metrics_document(per_user, cover, k, start, end, truth_days, users, new_sale_days, skipped,
                      recommender_names) -> dict:
    def means(rows: pd.DataFrame) -> dict:
        values = {f"{m}@{k}": float(rows[m].mean()) for m in PER_USER} if len(rows) else {}
        return {**values, "users": int(len(rows))}

    models = {}
    for strategy in (METAMODEL, *recommender_names):
        mine = per_user[per_user["strategy"] == strategy]
        entry = {segment: means(mine[mine["segment"] == segment]) for segment in SEGMENTS}
        covered = cover[cover["strategy"] == strategy]["coverage"]
        entry["overall"][f"coverage@{k}"] = float(covered.mean()) if len(covered) else None
        overall = mine[mine["segment"] == "overall"]
        entry["per_day"] = {str(day): means(rows) for day, rows in overall.groupby("day")}
        models[strategy] = entry
    return {
        "start": str(start), "end": str(end), "k": k, "truth_days": truth_days, "users": users,
        "new_sale_days": new_sale_days, "skipped_days": skipped,
        "definitions": {
            "per user": "metrics are averaged over (user, day) pairs where the user bought at "
                        "least one sale open on the day within the truth window",
            f"coverage@{k}": "share of the day's open sales that appear in at least one list, "
                             "averaged over days",
            f"revenue@{k}": "amount (else sale price) of the recommended purchases per user",
            "new_sales": f"truth restricted to sales in their first {new_sale_days} days",
            "new_users": "users who had bought nothing before the day",
        },
        "models": models,
    }


def _per_day_table(per_user: pd.DataFrame, cover: pd.DataFrame, k: int) -> pd.DataFrame:
    if per_user.empty:
        return pd.DataFrame(columns=["day", "strategy", "segment", *(f"{m}@{k}" for m in PER_USER), "users"])
    table = (per_user.groupby(["day", "strategy", "segment"])[list(PER_USER)].mean()
             .rename(columns=lambda m: f"{m}@{k}"))
    table["users"] = per_user.groupby(["day", "strategy", "segment"])["user_id"].nunique()
    table = table.reset_index()
    return table.merge(cover.assign(segment="overall").rename(columns={"coverage": f"coverage@{k}"}),
                       on=["day", "strategy", "segment"], how="left")


def _log_to_mlflow(metrics: dict, per_day: pd.DataFrame, k: int) -> None:
    """The metrics document, a child run per model (overall, breakdowns, per-day steps) and
    two plots on the parent: NDCG per day, and lift over popularity."""
    mlflow.log_dict(metrics, "metrics.json")
    overall = per_day[per_day["segment"] == "overall"].sort_values("day")
    days = sorted(overall["day"].unique())
    for strategy, entry in metrics["models"].items():
        with mlflow.start_run(run_name=strategy, nested=True):
            mlflow.set_tag("model", strategy)
            for segment in SEGMENTS:
                mlflow.log_metrics({f"{segment}.{name.replace('@', '_at_')}": value
                                    for name, value in entry[segment].items() if value is not None})
            for _, row in overall[overall["strategy"] == strategy].iterrows():
                mlflow.log_metrics({f"daily.{m}_at_{k}": float(row[f"{m}@{k}"]) for m in PER_USER},
                                   step=days.index(row["day"]))
    if not overall.empty:
        _plots(metrics, overall, k)


def _plots(metrics: dict, overall: pd.DataFrame, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for strategy, rows in overall.groupby("strategy"):
        axis.plot(pd.to_datetime(rows["day"]), rows[f"ndcg@{k}"], marker="o",
                  linewidth=2.5 if strategy == METAMODEL else 1.2, label=strategy)
    axis.set_title(f"NDCG@{k} per day")
    axis.set_ylabel(f"NDCG@{k}")
    axis.legend(fontsize=8)
    figure.autofmt_xdate()
    mlflow.log_figure(figure, "plots/ndcg_per_day.png")
    plt.close(figure)

    floor = metrics["models"].get("popularity", {}).get("overall", {})
    names = [m for m in metrics["models"] if m != "popularity"]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / 3
    for i, metric in enumerate((f"ndcg@{k}", f"recall@{k}", f"hit_rate@{k}")):
        base = floor.get(metric)
        lifts = [(metrics["models"][m]["overall"].get(metric, np.nan) / base - 1) * 100
                 if base else np.nan for m in names]
        axis.bar(np.arange(len(names)) + i * width, lifts, width, label=metric)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(np.arange(len(names)) + width, names, rotation=20)
    axis.set_ylabel("% over popularity")
    axis.set_title("Lift over popularity (overall)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    mlflow.log_figure(figure, "plots/lift_over_popularity.png")
    plt.close(figure)
