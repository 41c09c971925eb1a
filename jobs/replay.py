"""The rolling backtest: replay a range of dates as the nightly run would have seen them.

For each date D: the meta-model is trained on the days before D, every strategy (the
meta-model and each recommender alone) ranks the sales open on D for the evaluated users,
and the lists are compared with what those users bought in ``[D, D + truth_days)`` among
the sales open on D.  Everything a date's rankings use comes from
``ScoringContext.build(as_of=D)``, the same mechanism as the nightly run and training.

Outputs under OUT: ``metrics.json`` (overall, per breakdown and per day, for each model,
each mean with its 95 % bootstrap interval over the (user, day) pairs, and paired differences
of models), ``recommendations/model=NAME/run_date=D/`` (each day's top-k in the nightly
schema) and an MLflow parent run with a child run per model and plots.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import zlib
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .. import recommenders as recs
from ..conf import ConfigError, flatten
from ..features.history import Catalog, ScoringContext, not_bought_before
from ..features.loading import load_tables
from ..metamodel.calibration import calibration_check
from ..metamodel.evaluation import LEVEL, PER_USER, Resampled, per_user_metrics, verdict
from ..metamodel.signals import signals_from_config
from ..metamodel.ranking import FALLBACK, METAMODEL, fallback_lists, rank_users
from ..metamodel.training import TrainingDataError, cached_day, calibration_pairs, fit_metamodel
from ..recommenders.scoring import released
from .lease import hold
from .pipeline import Stages, run_image_stage
from .publish import publish_parquet
from ..storage import FileSystem, join
from .tracking import start_run, tracking_uri

log = logging.getLogger("salerank")

USER_SETS = ("active", "all")
SEGMENTS = ("overall", "new_sales", "established_sales", "new_users", "returning_users", "inactive_users")


@dataclass
class BacktestResult:
    metrics: dict  # what metrics.json holds
    per_day: pd.DataFrame  # day, model, segment, metric columns, users
    output: str
    mlflow_run_id: str


def _dates(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def truth_window(tables, catalog: Catalog, day: dt.date, truth_days: int) -> pd.DataFrame:
    """Purchases in ``[day, day + truth_days)`` of the sales open on ``day`` that the user had
    not bought before ``day`` (the night's lists leave those out; ``purchases_on``):
    ``user_id, sale_id, amount`` (the purchase's amount, else the sale's price, else 0)."""
    start = F.lit(day).cast("timestamp")
    end = F.lit(day + dt.timedelta(days=truth_days)).cast("timestamp")
    open_ids = [str(s) for s in catalog.sale_ids(catalog.open_on(day))]
    bought = not_bought_before(tables.purchases.filter((F.col("ts") >= start) & (F.col("ts") < end))
                               .filter(F.col("sale_id").isin(open_ids)), tables, day)
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
                 new_sale_days: int = 2, wait: bool = False, replicates: int = 1000,
                 compare: list[tuple[str, str]] | None = None) -> BacktestResult:
    """Replay every date of ``[start, end]``; see the module docstring. Holds the lease
    ``backtest`` of ``out_dir`` (``wait``: wait for its holder instead of raising
    ``LeaseHeldError``).

    Every mean gets a 95 % percentile interval from ``replicates`` bootstrap resamples of
    the (user, day) pairs, seeded by ``config['seed']`` (0: no intervals).  ``compare``:
    pairs ``(A, B)`` of models whose difference B - A gets a paired interval, besides the
    meta-model against each recommender alone (a name not in the backtest: ``ConfigError``)."""
    if end < start:
        raise ValueError(f"the backtest ends ({end}) before it starts ({start})")
    if users not in USER_SETS:
        raise ValueError(f"users must be one of {USER_SETS}, not {users!r}")
    if replicates < 0:
        raise ValueError(f"replicates must be at least 0, not {replicates}")
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
        prototypes = recs.from_config(config, with_images=with_images)
        pairs = comparison_pairs([*[r.name for r in prototypes], FALLBACK], compare or [])
        if with_images:
            # photos and labels are sale metadata, known before any date: one tagger and themes,
            # fitted here on the labels given (not a registered version's), for every date
            with stages("images"):
                with hold(spark, out_dir, "image_cache", config, wait=True):  # shared with train, nightly
                    themes, _, embeddings = run_image_stage(tables, data_dir, out_dir, config)
                    catalog = catalog.with_themes(themes.sale_themes, themes.sale_attributes, embeddings)
        examples_cache: dict = {}
        per_user, per_day_coverage, skipped, calibration = [], [], {}, {}
        dates = _dates(start, end)
        for i, day in enumerate(dates, 1):
            log.info("backtest day %d of %d (%s)", i, len(dates), day)
            with stages(f"day {day}"):
                reason = _replay_day(tables, catalog, prototypes, day, out_dir, config, truth_days,
                                     users, new_sale_days, examples_cache, per_user, per_day_coverage,
                                     calibration)
            # the next date trains on the train_days days before it: older days are done with
            first = day + dt.timedelta(days=1 - config["metamodel"]["train_days"])
            for done in [key for key in examples_cache if cached_day(key) < first]:
                del examples_cache[done]
            if reason:
                skipped[str(day)] = reason
                log.warning("backtest %s skipped: %s", day, reason)
        per_user = pd.concat(per_user, ignore_index=True) if per_user else pd.DataFrame(
            columns=["day", "segment", "strategy", "user_id", *PER_USER])
        cover = pd.DataFrame(per_day_coverage, columns=["day", "strategy", "coverage"])
        overall, daily = _summaries(per_user, [METAMODEL, *[r.name for r in prototypes], FALLBACK], k,
                                    replicates, config["seed"])
        metrics = _metrics_document(overall, daily, cover, k, start, end, truth_days, users,
                                    new_sale_days, skipped, pairs, replicates, config["seed"])
        metrics["calibration"] = calibration_document(calibration)
        per_day = _per_day_table(daily, cover, k)
        target = join(out_dir, "metrics.json")  # a reader sees the old file or the whole new one
        FileSystem(spark, target).write_bytes(target, json.dumps(metrics, indent=2).encode())
        _log_to_mlflow(metrics, per_day, k)
        mlflow.log_metrics({f"seconds_{name.replace(' ', '_')}": s for name, s in stages.seconds.items()})
        return BacktestResult(metrics, per_day, str(out_dir), parent.info.run_id)


def _replay_day(tables, catalog, prototypes, day, out_dir, config, truth_days, users, new_sale_days,
                examples_cache, per_user, per_day_coverage, calibration) -> str | None:
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
            active = set(context.active_users(config["active_lookback_days"]).toPandas()["user_id"])
            # the published probabilities of the day against its purchases, on every ranked pair
            pairs = calibration_pairs(tables, catalog, prototypes + signals_from_config(config),
                                      model.feature_names, [day], config, examples_cache)
            calibration[day] = (pairs, model.probability(model.log_odds(
                pairs[model.feature_names].to_numpy(dtype=float))))
        finally:
            ranked_users.unpersist()
    for strategy, sales in zip(lists["strategy"], lists["sales"]):
        per_day_coverage.append((day, strategy, sales / len(context.open_idx)))
    truth = truth[truth["user_id"].isin(set(recommended["user_id"]))]  # users ranked that day
    segments = segment_truth(truth, context, new_sale_days)
    # the buyers the night ranks no list for (with --users all): the website shows them the fallback
    segments["inactive_users"] = truth[~truth["user_id"].isin(active)]
    for segment, part in segments.items():
        rows = per_user_metrics(recommended, part, config["top_k"])
        per_user.append(rows.assign(day=day, segment=segment))
    return None


def calibration_document(days: dict) -> dict:
    """Expected (the published probabilities summed over every ranked pair, estimated from the
    day's weighted pairs) against observed purchases: per day, on average over days, and the
    reliability table of all days' pairs (``metamodel/calibration.py``)."""
    if not days:
        return {}
    per_day = {str(day): calibration_check(p, pairs)[0] for day, (pairs, p) in days.items()}
    pooled, table = calibration_check(np.concatenate([p for _, p in days.values()]),
                                      pd.concat([pairs for pairs, _ in days.values()], ignore_index=True))
    ratios = [d["expected_over_observed"] for d in per_day.values() if d["observed_purchases"]]
    return {"definition": "expected_purchases: the sum of the published purchase probabilities over "
                          "every pair ranked on the day (active user x open sale not yet bought, "
                          "estimated from a weighted uniform sample); observed_purchases: their purchases",
            "mean_expected_over_observed": float(np.mean(ratios)) if ratios else None,
            "pooled": pooled, "per_day": per_day,
            "reliability": table.reset_index().to_dict(orient="records")}


def _rank_and_publish(context, prototypes, model, users, truth, out_dir, config):
    """Publish every strategy's top-k of ``users`` on the context's day, and the meta-model's
    fallback list (``fallback/model=metamodel``); return (pandas) the rankings of the truth's
    buyers, each also given the fallback list (strategy ``fallback``), and the number of
    distinct sales each strategy listed."""
    fitted = recs.fit_all(prototypes + signals_from_config(config), context)
    ranked = rank_users(context, prototypes, model, users, config, fitted=fitted).cache()
    fallback = fallback_lists(context, prototypes, model, config, (METAMODEL,), fitted).toPandas()
    publish_parquet(spark_frame(ranked, fallback[["rank", "sale_id"]]).select(
        F.col("rank").cast("int"), "sale_id", F.lit(model.version_).alias("content_version")),
        join(out_dir, "fallback", f"model={METAMODEL}", f"run_date={context.as_of}"))
    try:
        for strategy in (METAMODEL, *[r.name for r in prototypes]):
            # the day's meta-model is not registered: its content hash, not a registry label
            version = F.lit(model.version_ if strategy == METAMODEL else None).cast("string")
            publish_parquet(ranked.filter(F.col("strategy") == strategy).select(
                "user_id", "rank", "sale_id", "score", version.alias("content_version")),
                join(out_dir, "recommendations", f"model={strategy}", f"run_date={context.as_of}"))
        buyers = spark_frame(ranked, truth[["user_id"]].drop_duplicates())
        recommended = ranked.join(buyers, "user_id").toPandas() if len(truth) else ranked.limit(0).toPandas()
        lists = ranked.groupBy("strategy").agg(F.countDistinct("sale_id").alias("sales")).toPandas()
    finally:
        ranked.unpersist()
    # to the buyers ranked that day (with --users active, the active ones): as their other lists
    ranked_buyers = pd.DataFrame({"user_id": sorted(set(recommended["user_id"]))})
    given = fallback.drop(columns="strategy").merge(ranked_buyers, how="cross")
    recommended = pd.concat([recommended, given.assign(strategy=FALLBACK)[recommended.columns]], ignore_index=True)
    lists.loc[len(lists)] = [FALLBACK, fallback["sale_id"].nunique()]
    return recommended, lists


def spark_frame(like, frame: pd.DataFrame):
    """A small pandas frame as a Spark DataFrame (broadcast), on ``like``'s session."""
    schema = ", ".join(f"{c} string" for c in frame.columns)
    return F.broadcast(like.sparkSession.createDataFrame(frame.astype(str), schema))


def comparison_pairs(recommender_names: list[str], compare: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs (A, B) whose difference B - A is measured: the meta-model against each
    of ``recommender_names`` (the recommenders alone, and the fallback list), then those asked for."""
    known = [METAMODEL, *recommender_names]
    unknown = sorted({name for pair in compare for name in pair} - set(known))
    if unknown:
        raise ConfigError(f"--compare: no model {', '.join(map(repr, unknown))} in this backtest "
                          f"(its models: {', '.join(known)})")
    pairs = [(name, METAMODEL) for name in known[1:]]
    return pairs + [tuple(pair) for pair in dict.fromkeys(map(tuple, compare)) if tuple(pair) not in pairs]


def _summaries(per_user: pd.DataFrame, strategies: list[str], k: int, replicates: int, seed: int):
    """Each group of (user, day) pairs described by :func:`_describe`: per segment over all
    days, and per (day, segment)."""
    overall = {segment: _describe(per_user[per_user["segment"] == segment], strategies, k,
                                  replicates, seed, segment) for segment in SEGMENTS}
    daily = {(day, segment): _describe(rows, strategies, k, replicates, seed, f"{day}/{segment}")
             for (day, segment), rows in per_user.groupby(["day", "segment"])}
    return overall, daily


def _describe(rows: pd.DataFrame, strategies: list[str], k: int, replicates: int, seed: int, label: str):
    """One group of (user, day) pairs: per strategy the mean of each metric (``{m}@k``), the
    pairs (``users``) and each mean's 95 % interval (``ci95``: ``[low, high]``); and the
    group's bootstrap, shared by the strategies (None without pairs or replicates).  The
    group's resamples are seeded by ``seed`` and its label: the same whatever else ran."""
    resampled = (Resampled(rows, replicates, [seed, zlib.crc32(label.encode())])
                 if len(rows) and replicates else None)
    entries = {}
    for strategy in strategies:
        mine = rows[rows["strategy"] == strategy]
        entry = {f"{m}@{k}": float(mine[m].mean()) for m in PER_USER} if len(mine) else {}
        entry["users"] = int(len(mine))
        if resampled is not None and len(mine):
            entry["ci95"] = {f"{m}@{k}": list(bounds) for m, bounds in resampled.interval(strategy).items()}
        entries[strategy] = entry
    return entries, resampled


def _difference(described, a: str, b: str, k: int) -> dict:
    """B - A per metric in one group: ``difference``, its paired 95 % interval (``ci95``) and
    the ``verdict`` of B against A; empty when either has no pairs there."""
    entries, resampled = described
    if resampled is None or not (entries[a]["users"] and entries[b]["users"]):
        return {}
    return {f"{m}@{k}": {"difference": entries[b][f"{m}@{k}"] - entries[a][f"{m}@{k}"],
                         "ci95": [low, high], "verdict": verdict(low, high)}
            for m, (low, high) in resampled.difference(a, b).items()}


def overall_table(metrics: dict) -> pd.DataFrame:
    """The overall metrics of a backtest, one row per model (the means; see
    :func:`overall_text` for their intervals)."""
    return pd.DataFrame({model: {name: value for name, value in entry["overall"].items() if name != "ci95"}
                         for model, entry in metrics["models"].items()}).T


def _number(name: str, value: float) -> str:
    return f"{value:.2f}" if name.startswith("revenue") else f"{value:.4f}"


def overall_text(metrics: dict) -> str:
    """The overall table as printed: each mean with its 95 % interval, ``0.0540 [0.0410, 0.0670]``."""
    rows = {}
    for model, entry in metrics["models"].items():
        overall, bounds = entry["overall"], entry["overall"].get("ci95", {})
        row = {}
        for name, value in overall.items():
            if name == "ci95" or value is None:
                continue
            text = str(value) if name == "users" else _number(name, value)
            if name in bounds:
                text += " [" + ", ".join(_number(name, v) for v in bounds[name]) + "]"
            row[name] = text
        rows[model] = row
    note = (f"mean over the (user, day) pairs with a purchase [95% interval: "
            f"{metrics['bootstrap']['replicates']} bootstrap resamples of the pairs]"
            if metrics["bootstrap"]["replicates"] else "mean over the (user, day) pairs with a purchase")
    return note + "\n" + pd.DataFrame(rows).T.fillna("").to_string()


def comparison_text(metrics: dict, pairs: list[tuple[str, str]] | None = None) -> str:
    """B - A overall for each pair (default: every pair of ``metrics['comparisons']``): the
    difference of each metric, its paired 95 % interval and the verdict in words."""
    chosen = [tuple(p) for p in pairs] if pairs else [(c["a"], c["b"]) for c in metrics["comparisons"].values()]
    rows = []
    for a, b in chosen:
        for name, d in metrics["comparisons"][f"{b} - {a}"]["overall"].items():
            rows.append({"B - A": f"{b} - {a}", "metric": name,
                         "difference": ("+" if d["difference"] >= 0 else "") + _number(name, d["difference"]),
                         "95% interval": "[" + ", ".join(_number(name, v) for v in d["ci95"]) + "]",
                         "verdict": f"{b} {d['verdict']}" if d["verdict"] != "no detectable difference"
                         else d["verdict"]})
    if not rows:
        return "no paired comparison (no (user, day) pair with a purchase, or no bootstrap)"
    return ("paired bootstrap over the same (user, day) pairs\n"
            + pd.DataFrame(rows).to_string(index=False))


def _metrics_document(overall, daily, cover, k, start, end, truth_days, users, new_sale_days, skipped,
                      pairs, replicates, seed) -> dict:
    models = {}
    for strategy in overall["overall"][0]:
        entry = {segment: overall[segment][0][strategy] for segment in SEGMENTS}
        covered = cover[cover["strategy"] == strategy]["coverage"]
        entry["overall"][f"coverage@{k}"] = float(covered.mean()) if len(covered) else None
        entry["per_day"] = {str(day): entries[strategy] for (day, segment), (entries, _) in daily.items()
                            if segment == "overall" and entries[strategy]["users"]}
        models[strategy] = entry
    comparisons = {f"{b} - {a}": {"a": a, "b": b, **{segment: _difference(overall[segment], a, b, k)
                                                       for segment in SEGMENTS}}
                   for a, b in pairs}
    return {
        "start": str(start), "end": str(end), "k": k, "truth_days": truth_days, "users": users,
        "new_sale_days": new_sale_days, "skipped_days": skipped,
        "bootstrap": {"replicates": replicates, "level": LEVEL, "unit": "(user, day) pair", "seed": seed,
                      "interval": "percentile"},
        "definitions": {
            "per user": "metrics are averaged over (user, day) pairs where the user bought at "
                        "least one sale open on the day within the truth window",
            "ci95": f"95 % percentile interval of the mean over {replicates} bootstrap resamples of "
                    "the (user, day) pairs of the entry (drawn with replacement, as many as there are)",
            f"coverage@{k}": "share of the day's open sales that appear in at least one list, "
                             "averaged over days (every list of every ranked user, not a sample of "
                             "buyers: no interval)",
            f"revenue@{k}": "amount (else sale price) of the recommended purchases per user",
            "new_sales": f"truth restricted to sales in their first {new_sale_days} days",
            "new_users": "users who had bought nothing before the day",
            "inactive_users": "buyers with no visit or purchase in the active_lookback_days before "
                              "the day: the night ranks no list for them (with --users all they are "
                              "ranked here anyway); the website shows them the fallback list",
            FALLBACK: "the night's fallback list (for a user with no history: the meta-model's "
                      "non-personal model's ranking), given to every buyer",
            "comparisons": "'B - A': mean of B minus mean of A over the same (user, day) pairs, with "
                           "a paired 95 % interval (each resample applied to both); verdict: B "
                           "'higher' or 'lower' when the interval excludes 0, else 'no detectable "
                           "difference'",
        },
        "models": models,
        "comparisons": comparisons,
    }


def _per_day_table(daily: dict, cover: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per (day, strategy, segment) with pairs: the means, their interval bounds
    (``{m}@k_low``, ``{m}@k_high``), the pairs, and the day's coverage (overall rows)."""
    rows = []
    for (day, segment), (entries, _) in daily.items():
        for strategy, entry in entries.items():
            if not entry["users"]:
                continue
            bounds = {f"{name}_{side}": value for name, (low, high) in entry.get("ci95", {}).items()
                      for side, value in (("low", low), ("high", high))}
            rows.append({"day": day, "strategy": strategy, "segment": segment,
                         **{name: value for name, value in entry.items() if name != "ci95"}, **bounds})
    names = [f"{m}@{k}" for m in PER_USER]
    columns = ["day", "strategy", "segment", *names, "users",
               *(f"{name}_{side}" for name in names for side in ("low", "high"))]
    if not rows:
        return pd.DataFrame(columns=[*columns, f"coverage@{k}"])
    coverage = cover.assign(segment="overall").rename(columns={"coverage": f"coverage@{k}"})
    return pd.DataFrame(rows).reindex(columns=columns).merge(coverage, on=["day", "strategy", "segment"], how="left")


def _log_to_mlflow(metrics: dict, per_day: pd.DataFrame, k: int) -> None:
    """The metrics document, a child run per model (overall, breakdowns with their interval
    bounds, per-day steps), and on the parent the comparisons (B - A overall, with bounds) and
    two plots: NDCG per day, and lift over popularity."""
    mlflow.log_dict(metrics, "metrics.json")
    overall = per_day[per_day["segment"] == "overall"].sort_values("day")
    days = sorted(overall["day"].unique())
    for strategy, entry in metrics["models"].items():
        with mlflow.start_run(run_name=strategy, nested=True):
            mlflow.set_tag("model", strategy)
            for segment in SEGMENTS:
                values = {name: value for name, value in entry[segment].items()
                          if name != "ci95" and value is not None}
                for name, (low, high) in entry[segment].get("ci95", {}).items():
                    values.update({f"{name}_low": low, f"{name}_high": high})
                mlflow.log_metrics({f"{segment}.{name.replace('@', '_at_')}": value
                                    for name, value in values.items()})
            for _, row in overall[overall["strategy"] == strategy].iterrows():
                mlflow.log_metrics({f"daily.{m}_at_{k}": float(row[f"{m}@{k}"]) for m in PER_USER},
                                   step=days.index(row["day"]))
    for comparison in metrics["comparisons"].values():  # on the parent: B - A overall
        prefix = f"compare.{comparison['b']}_minus_{comparison['a']}"
        for metric, d in comparison["overall"].items():
            metric = metric.replace("@", "_at_")
            mlflow.log_metrics({f"{prefix}.{metric}": d["difference"], f"{prefix}.{metric}_low": d["ci95"][0],
                                f"{prefix}.{metric}_high": d["ci95"][1]})
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
