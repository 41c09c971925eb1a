"""``salerank ab report``: what an A/B experiment did to conversion and revenue.

The exposed users of an experiment are those in its exports (``OUT/exports/run_date=D/NAME/
VARIANT.jsonl``) over the nights it ran; a user is counted from the first night they were
exported until ``window_days`` after the last exported night. Per user: converted (at least one
purchase in that period) and revenue (the purchases' ``amount``, else the sale's ``price``).
Per variant: users, conversion rate, revenue per user. Each variant is compared with the
first (the control) by the relative uplift of the means, with a delta-method confidence
interval; a chi-square test of the users per variant against the configured weights flags a
sample-ratio mismatch (a broken split makes every other number untrustworthy).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scipy import stats

from ..conf import ConfigError
from ..storage import FileSystem, join

log = logging.getLogger("salerank")

SRM_P_VALUE = 0.001  # below it, the split is not what the weights say
METRICS = ("converted", "revenue")


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a per-user metric in one variant."""

    n: int
    total: float
    total_squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    @property
    def variance_of_mean(self) -> float:
        if self.n < 2:
            return float("nan")
        variance = (self.total_squares - self.total ** 2 / self.n) / (self.n - 1)
        return max(variance, 0.0) / self.n


def relative_uplift(control: Moments, treatment: Moments, confidence: float = 0.95) -> dict:
    """``mean(treatment) / mean(control) - 1`` with a delta-method confidence interval.

    Var(t/c) ≈ Var(t)/c² + t²·Var(c)/c⁴ for independent groups (t, c the variants' means).
    """
    c, t = control.mean, treatment.mean
    z = stats.norm.ppf(0.5 + confidence / 2)
    if not c or math.isnan(c) or math.isnan(t):
        return {"uplift": None, "low": None, "high": None, "p_value": None}
    se = math.sqrt(treatment.variance_of_mean / c ** 2 + t ** 2 * control.variance_of_mean / c ** 4)
    ratio = t / c
    p_value = float(2 * stats.norm.sf(abs(ratio - 1) / se)) if se > 0 else None
    return {"uplift": ratio - 1, "low": ratio - 1 - z * se, "high": ratio - 1 + z * se, "p_value": p_value}


def sample_ratio_check(users: dict[str, int], weights: dict[str, float]) -> dict:
    """Chi-square test of the users per variant against the weights' expected shares."""
    observed = np.array([users.get(v, 0) for v in weights], dtype=float)
    expected = np.array(list(weights.values()), dtype=float)
    expected = expected / expected.sum() * observed.sum()
    chi2, p_value = stats.chisquare(observed, expected) if observed.sum() else (0.0, 1.0)
    return {"chi2": float(chi2), "p_value": float(p_value), "mismatch": bool(p_value < SRM_P_VALUE),
            "expected_share": {v: float(w) for v, w in zip(weights, expected / max(observed.sum(), 1))}}


def exposures(spark: SparkSession, out_dir: str, experiment: str):
    """``user_id, variant, first_night, last_night`` of every exported user, and the
    experiment's weights as the last night's manifest recorded them.

    Only published nights (``_SUCCESS``) whose manifest lists the experiment count: an export
    left behind by an older run of the night is not part of it."""
    files = FileSystem(spark, out_dir)
    nights = {}  # run_date=D -> the experiment as that night's manifest lists it
    for night in files.names(join(out_dir, "manifests")):
        folder = join(out_dir, "manifests", night)
        if files.exists(join(folder, "_SUCCESS")):
            listed = json.loads(files.read_text(join(folder, "manifest.json"))).get("experiments", {})
            if experiment in listed:
                nights[night] = listed[experiment]
    if not nights:
        raise ConfigError(f"no published export of the experiment {experiment!r} under "
                          f"{join(out_dir, 'exports')}/run_date=*/{experiment}/ (no published night's "
                          "manifest lists it)")
    weights = {v: spec["weight"] for v, spec in nights[max(nights)]["variants"].items()}
    paths = [join(out_dir, "exports", night, experiment, f"{variant}.jsonl")
             for night, listed in sorted(nights.items()) for variant in listed["variants"]]
    lines = spark.read.schema("user_id string, variant string, run_date date").json(paths)
    users = lines.groupBy("user_id").agg(
        F.countDistinct("variant").alias("variants"), F.first("variant").alias("variant"),
        F.min("run_date").alias("first_night"), F.max("run_date").alias("last_night"))
    switched = users.filter(F.col("variants") > 1).limit(1).collect()
    if switched:
        raise ConfigError(f"experiment {experiment!r}: user {switched[0]['user_id']!r} was exported in "
                          "more than one variant (was the salt or a weight changed mid-experiment?)")
    return users.drop("variants"), weights, [n.split("=", 1)[1] for n in sorted(nights)]


def per_user_outcomes(users, tables, window_days: int):
    """``variant, converted, revenue`` per exposed user, from their purchases in
    [first night, last night + window_days)."""
    price = tables.sales.select("sale_id", F.col("price").cast("double").alias("price")) \
        if "price" in tables.sales.columns else tables.sales.select("sale_id", F.lit(None).cast("double").alias("price"))
    purchases = tables.purchases.join(price, "sale_id", "left")
    value = F.coalesce(F.col("amount").cast("double") if "amount" in purchases.columns else F.lit(None).cast("double"),
                       F.col("price"), F.lit(0.0))
    day = F.to_date("ts")
    in_window = (day >= F.col("first_night")) & (day < F.date_add("last_night", window_days))
    joined = users.join(purchases.select("user_id", "ts", value.alias("value")), "user_id", "left")
    return joined.groupBy("user_id", "variant").agg(
        F.max(F.when(in_window, 1.0).otherwise(0.0)).alias("converted"),
        F.sum(F.when(in_window, F.col("value")).otherwise(0.0)).alias("revenue"))


def variant_moments(outcomes) -> dict[str, dict[str, Moments]]:
    aggregates = [F.count(F.lit(1)).alias("n")]
    for metric in METRICS:
        aggregates += [F.sum(metric).alias(f"{metric}_sum"), F.sum(F.col(metric) ** 2).alias(f"{metric}_sq")]
    rows = outcomes.groupBy("variant").agg(*aggregates).collect()
    return {r["variant"]: {m: Moments(r["n"], float(r[f"{m}_sum"]), float(r[f"{m}_sq"])) for m in METRICS}
            for r in rows}


def ab_report(spark: SparkSession, tables, out_dir: str, experiment: str, window_days: int = 7) -> dict:
    """The report of ``experiment`` (see the module docstring) as a JSON-ready dict."""
    users, weights, nights = exposures(spark, out_dir, experiment)
    moments = variant_moments(per_user_outcomes(users, tables, window_days))
    control = next(iter(weights))
    variants = {}
    for variant in weights:
        m = moments.get(variant, {k: Moments(0, 0.0, 0.0) for k in METRICS})
        entry = {"users": m["converted"].n, "conversion": m["converted"].mean,
                 "revenue_per_user": m["revenue"].mean, "revenue": m["revenue"].total}
        if variant != control and control in moments:
            entry["uplift"] = {name: relative_uplift(moments[control][metric], m[metric])
                               for name, metric in (("conversion", "converted"), ("revenue_per_user", "revenue"))}
        variants[variant] = entry
    return {"experiment": experiment, "control": control, "nights": nights,
            "window_days": window_days, "variants": variants,
            "sample_ratio": sample_ratio_check({v: e["users"] for v, e in variants.items()}, weights)}


def report_table(report: dict) -> str:
    """The report as a table for the console."""
    rows = []
    for variant, e in report["variants"].items():
        row = {"variant": variant, "users": e["users"], "conversion": f"{e['conversion']:.4f}",
               "revenue/user": f"{e['revenue_per_user']:.2f}"}
        for name, label in (("conversion", "conversion uplift"), ("revenue_per_user", "revenue uplift")):
            u = e.get("uplift", {}).get(name)
            row[label] = ("control" if variant == report["control"] else "n/a" if not u or u["uplift"] is None
                          else f"{u['uplift']:+.1%} [{u['low']:+.1%}, {u['high']:+.1%}]")
        rows.append(row)
    srm = report["sample_ratio"]
    verdict = ("MISMATCH: the split is not what the weights say; do not trust the uplifts"
               if srm["mismatch"] else "ok")
    nights = report["nights"]
    return (f"experiment {report['experiment']}: {len(nights)} nights ({nights[0]}..{nights[-1]}), "
            f"purchases up to {report['window_days']} days after the last\n"
            f"{pd.DataFrame(rows).to_string(index=False)}\n"
            f"95% confidence intervals (delta method) against {report['control']}\n"
            f"sample ratio: chi2 {srm['chi2']:.2f}, p {srm['p_value']:.3g}: {verdict}")

