"""``salerank ab report``: what an A/B experiment did to conversion and revenue.

**Who counts, and over which days (intent to treat).** A user enters the experiment at their
first exposure and is measured over a fixed horizon from it: the ``window_days`` days
``[first exposure, first exposure + window_days)``, whatever they do afterwards. The window
depends on nothing the treatment can change (a window that ran until the user's *last*
exposure would grow with any treatment that makes users come back more often, and show an
uplift in conversion that is only an uplift in activity). Only users whose whole window the
data covers are counted; the report says how many are still open and when it is complete. The
data is taken as complete through the day of its newest visit or purchase.

**Exposure.** With the optional ``exposures`` table (what the website actually showed:
``user_id, experiment, variant, ts``), a user's first exposure is their first row there, and
their variant is their assignment (the experiment's salted hash, ``jobs/experiments.py``);
users shown a variant other than their assignment are counted and reported, and still analysed
in their assigned variant. Without it, the first exported night stands for the first exposure.

**Per user:** converted (at least one purchase in the window) and revenue (the purchases'
``amount``, else the sale's ``price``). **Per variant:** users, conversion rate, revenue per
user, and against the first variant (the control) the relative uplift of the means with a
delta-method confidence interval; with ``cuped_days``, also the uplift of the CUPED-adjusted
means (conversion adjusted by the user's number of purchases, revenue by their revenue, over the
``cuped_days`` days before their first exposure: same expected difference, less variance), with
the variance reduction achieved.

**Checks.** A chi-square test of the users per variant against the weights flags a
sample-ratio mismatch. It can only find a broken split when counted on exposures: the exports
were made by the same hash that assigns the variants, so without ``exposures`` the report says
that the split was only checked against the export. **Power:** the minimal detectable effect
at the current sample size, and the users needed to detect a chosen relative effect, at a
two-sided 5 % level with 80 % power.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy import stats

from ..conf import ConfigError
from ..storage import FileSystem, join
from .experiments import Experiment, Variant, assign

log = logging.getLogger("salerank")

SRM_P_VALUE = 0.001  # below it, the split is not what the weights say
CONFIDENCE, POWER = 0.95, 0.80
METRICS = {"conversion": "converted", "revenue_per_user": "revenue"}  # reported name -> per-user column
COVARIATES = {"converted": "pre_purchases", "revenue": "pre_revenue"}  # CUPED's pre-period covariate


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
    def variance(self) -> float:
        """The per-user sample variance."""
        if self.n < 2:
            return float("nan")
        return max((self.total_squares - self.total ** 2 / self.n) / (self.n - 1), 0.0)

    @property
    def variance_of_mean(self) -> float:
        return self.variance / self.n if self.n >= 2 else float("nan")


@dataclass(frozen=True)
class Paired:
    """A per-user metric ``y`` and its pre-period value ``x`` in one variant, with ``Σ x·y``."""

    y: Moments
    x: Moments
    cross: float

    def covariance(self) -> float:
        n = self.y.n
        return (self.cross - self.x.total * self.y.total / n) / (n - 1) if n >= 2 else 0.0


def cuped_theta(groups: list[Paired]) -> float:
    """CUPED's coefficient: the within-variant covariance of metric and pre-period metric over
    the pre-period variance, pooled over the variants (0 when the pre-period does not vary)."""
    usable = [g for g in groups if g.y.n >= 2]
    cov = sum((g.y.n - 1) * g.covariance() for g in usable)
    var = sum((g.y.n - 1) * g.x.variance for g in usable)
    return cov / var if var > 0 else 0.0


def cuped(group: Paired, theta: float, grand_mean_x: float) -> Moments:
    """The moments of ``y - theta (x - grand_mean_x)``: the same expected mean difference between
    variants (the pre-period cannot depend on the treatment), less variance when x predicts y."""
    n, m = group.y.n, grand_mean_x
    total = group.y.total - theta * (group.x.total - n * m)
    squares = (group.y.total_squares - 2 * theta * (group.cross - m * group.y.total)
               + theta ** 2 * (group.x.total_squares - 2 * m * group.x.total + n * m * m))
    return Moments(n, total, squares)


def relative_uplift(control: Moments, treatment: Moments, confidence: float = CONFIDENCE) -> dict:
    """``mean(treatment) / mean(control) - 1`` with a delta-method confidence interval.

    Var(t/c) ≈ Var(t)/c² + t²·Var(c)/c⁴ for independent groups (t, c the variants' means).
    """
    c, t = control.mean, treatment.mean
    z = stats.norm.ppf(0.5 + confidence / 2)
    if not c or math.isnan(c) or math.isnan(t) or control.n < 2 or treatment.n < 2:
        return {"uplift": None, "low": None, "high": None, "p_value": None}
    se = math.sqrt(treatment.variance_of_mean / c ** 2 + t ** 2 * control.variance_of_mean / c ** 4)
    ratio = t / c
    p_value = float(2 * stats.norm.sf(abs(ratio - 1) / se)) if se > 0 else None
    return {"uplift": ratio - 1, "low": ratio - 1 - z * se, "high": ratio - 1 + z * se, "p_value": p_value}


def _z_sum(confidence: float, power: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2) + stats.norm.ppf(power))


def _uplift_se(control: Moments, effect: float, n_control: float, n_treatment: float, binary: bool) -> float:
    """The delta-method standard error of the relative uplift when the true uplift is ``effect``:
    the treatment's variance is p(1 - p) at its mean for a 0/1 metric, else the control's scaled
    by (1 + effect)² (the same coefficient of variation)."""
    c, v = control.mean, control.variance
    t = c * (1 + effect)
    v_treatment = t * (1 - t) if binary else v * (1 + effect) ** 2
    return math.sqrt(v_treatment / n_treatment + (1 + effect) ** 2 * v / n_control) / c


def detectable_effect(control: Moments, treatment: Moments, binary: bool = False,
                      confidence: float = CONFIDENCE, power: float = POWER) -> float | None:
    """The smallest relative uplift that this many users detect with ``power`` at a two-sided
    ``1 - confidence`` level (see :func:`_uplift_se` for the variances assumed)."""
    if control.n < 2 or treatment.n < 2 or not control.mean:
        return None
    effect = 0.0
    for _ in range(50):  # effect = z · se(effect): a contraction for any usable sample size
        effect = _z_sum(confidence, power) * _uplift_se(control, effect, control.n, treatment.n, binary)
    return effect


def users_needed(control: Moments, effect: float, control_share: float, treatment_share: float,
                 binary: bool = False, confidence: float = CONFIDENCE, power: float = POWER) -> int | None:
    """Users the whole experiment needs (split by its weights, ``*_share`` of all users) to
    detect a relative uplift ``effect`` of the control's mean (see :func:`_uplift_se`)."""
    if control.n < 2 or not control.mean or effect <= 0:
        return None
    return math.ceil((_z_sum(confidence, power) * _uplift_se(control, effect, control_share, treatment_share, binary)
                      / effect) ** 2)


def sample_ratio_check(users: dict[str, int], weights: dict[str, float]) -> dict:
    """Chi-square test of the users per variant against the weights' expected shares."""
    observed = np.array([users.get(v, 0) for v in weights], dtype=float)
    expected = np.array(list(weights.values()), dtype=float)
    expected = expected / expected.sum() * observed.sum()
    chi2, p_value = stats.chisquare(observed, expected) if observed.sum() else (0.0, 1.0)
    return {"chi2": float(chi2), "p_value": float(p_value), "mismatch": bool(p_value < SRM_P_VALUE),
            "expected_share": {v: float(w) for v, w in zip(weights, expected / max(observed.sum(), 1))}}


# ---------------------------------------------------------------------------------------------
# Spark: exposures and per-user outcomes


def published_experiment(spark: SparkSession, out_dir: str, name: str) -> tuple[Experiment, list[str]]:
    """The experiment as its last published night recorded it (salt, variants in their declared
    order, weights), and the published nights (``_SUCCESS``) whose manifest lists it. An export
    left behind by an older run of a night is not part of it."""
    files = FileSystem(spark, out_dir)
    nights = {}  # run_date=D -> the experiment as that night's manifest lists it
    for night in files.names(join(out_dir, "manifests")):
        folder = join(out_dir, "manifests", night)
        if files.exists(join(folder, "_SUCCESS")):
            listed = json.loads(files.read_text(join(folder, "manifest.json"))).get("experiments", {})
            if name in listed:
                nights[night] = listed[name]
    if not nights:
        raise ConfigError(f"no published export of the experiment {name!r} under "
                          f"{join(out_dir, 'exports')}/run_date=*/{name}/ (no published night's "
                          "manifest lists it)")
    last = nights[max(nights)]
    # manifests are written with sorted keys: the declared order (control first) is in "order";
    # manifests older than it only had the sorted names
    order = last.get("order") or sorted(last["variants"])
    days = sorted(dt.date.fromisoformat(n.split("=", 1)[1]) for n in nights)
    variants = tuple(Variant(v, last["variants"][v]["strategy"], float(last["variants"][v]["weight"]))
                     for v in order)
    return Experiment(name, last["salt"], days[0], days[-1], variants), [d.isoformat() for d in days]


def exported_users(spark: SparkSession, out_dir: str, experiment: Experiment, nights: list[str]) -> DataFrame:
    """``user_id, variant, first_night`` of every user in the experiment's published exports."""
    paths = [join(out_dir, "exports", f"run_date={night}", experiment.name, f"{v.name}.jsonl")
             for night in nights for v in experiment.variants]
    lines = spark.read.schema("user_id string, variant string, run_date date").json(paths)
    users = lines.groupBy("user_id").agg(
        F.countDistinct("variant").alias("variants"), F.first("variant").alias("variant"),
        F.min("run_date").alias("first_night"))
    switched = users.filter(F.col("variants") > 1).limit(1).collect()
    if switched:
        raise ConfigError(f"experiment {experiment.name!r}: user {switched[0]['user_id']!r} was exported in "
                          "more than one variant (was the salt or a weight changed mid-experiment?)")
    return users.drop("variants")


def exposed_users(exposures: DataFrame, experiment: Experiment) -> DataFrame:
    """``user_id, variant, first_exposure, shown_other`` of every user the website exposed to
    ``experiment``: ``variant`` is the assignment, ``shown_other`` whether any exposure showed
    another variant."""
    rows = exposures.filter(F.col("experiment") == experiment.name)
    assigned = assign(rows.select("user_id").distinct(), experiment).drop("strategy")
    return (rows.join(assigned.withColumnRenamed("variant", "assigned"), "user_id")
            .groupBy("user_id", F.col("assigned").alias("variant"))
            .agg(F.to_date(F.min("ts")).alias("first_exposure"),
                 F.max((F.col("variant") != F.col("assigned")).cast("int")).cast("boolean").alias("shown_other")))


def valued_purchases(tables) -> DataFrame:
    """``user_id, day, value`` of every purchase: its ``amount``, else its sale's ``price``, else 0."""
    sales = tables.sales
    price = F.col("price").cast("double") if "price" in sales.columns else F.lit(None).cast("double")
    purchases = tables.purchases.join(sales.select("sale_id", price.alias("price")), "sale_id", "left")
    amount = F.col("amount").cast("double") if "amount" in purchases.columns else F.lit(None).cast("double")
    return purchases.select("user_id", F.to_date("ts").alias("day"),
                            F.coalesce(amount, F.col("price"), F.lit(0.0)).alias("value"))


def per_user_outcomes(users: DataFrame, purchases: DataFrame, window_days: int, pre_days: int = 0) -> DataFrame:
    """``user_id, variant, first_exposure, converted, revenue, pre_purchases, pre_revenue`` per
    user of ``users`` (``user_id, variant, first_exposure``): the outcomes over the fixed window
    ``[first_exposure, first_exposure + window_days)``, and the purchases and revenue of the
    ``pre_days`` days before it (0 when ``pre_days`` is 0). ``purchases``: see
    :func:`valued_purchases`."""
    start, day = F.col("first_exposure"), F.col("day")
    window = (day >= start) & (day < F.date_add(start, window_days))
    before = (day >= F.date_sub(start, pre_days)) & (day < start)
    joined = users.select("user_id", "variant", "first_exposure").join(purchases, "user_id", "left")
    return joined.groupBy("user_id", "variant", "first_exposure").agg(
        F.coalesce(F.max(F.when(window, 1.0)), F.lit(0.0)).alias("converted"),
        F.coalesce(F.sum(F.when(window, F.col("value"))), F.lit(0.0)).alias("revenue"),
        F.count(F.when(before, 1)).cast("double").alias("pre_purchases"),
        F.coalesce(F.sum(F.when(before, F.col("value"))), F.lit(0.0)).alias("pre_revenue"))


def variant_moments(outcomes: DataFrame) -> dict[str, dict[str, Paired]]:
    """Per variant and per-user metric, the moments of the metric and of its covariate."""
    aggregates = [F.count(F.lit(1)).alias("n")]
    for column, covariate in COVARIATES.items():
        y, x = F.col(column), F.col(covariate)
        aggregates += [F.sum(y).alias(f"{column}_y"), F.sum(y * y).alias(f"{column}_yy"),
                       F.sum(x).alias(f"{column}_x"), F.sum(x * x).alias(f"{column}_xx"),
                       F.sum(x * y).alias(f"{column}_xy")]
    moments = {}
    for r in outcomes.groupBy("variant").agg(*aggregates).collect():
        moments[r["variant"]] = {c: Paired(Moments(r["n"], float(r[f"{c}_y"]), float(r[f"{c}_yy"])),
                                           Moments(r["n"], float(r[f"{c}_x"]), float(r[f"{c}_xx"])),
                                           float(r[f"{c}_xy"]))
                                 for c in COVARIATES}
    return moments


def covered_through(tables) -> dt.date | None:
    """The last day the data covers: the day of its newest visit or purchase."""
    newest = [ts for name, (_, ts) in tables.last_events.items() if name in ("visits", "purchases") and ts]
    return max(newest).date() if newest else None


# ---------------------------------------------------------------------------------------------
# the report


def ab_report(spark: SparkSession, tables, out_dir: str, name: str, window_days: int = 7,
              cuped_days: int = 28, effect: float = 0.05) -> dict:
    """The report of the experiment ``name`` (see the module docstring) as a JSON-ready dict.
    ``cuped_days`` 0: no CUPED adjustment. ``effect``: the relative uplift whose users needed
    are reported."""
    if window_days < 1 or cuped_days < 0 or not effect > 0:
        raise ConfigError(f"ab report: --window-days must be at least 1 (got {window_days}), "
                          f"--cuped-days at least 0 (got {cuped_days}), --effect positive (got {effect})")
    experiment, nights = published_experiment(spark, out_dir, name)
    weights = {v.name: v.weight for v in experiment.variants}
    exported = exported_users(spark, out_dir, experiment, nights)
    website = tables.exposures.filter(F.col("experiment") == name) if tables.exposures is not None else None
    if website is not None and website.limit(1).count():
        users = exposed_users(website, experiment).cache()
        source = "exposures"
        exposure = _exposure_summary(users, exported)
    else:
        users = exported.select("user_id", "variant", F.col("first_night").alias("first_exposure")).cache()
        source, exposure = "exports", None
    try:
        through = covered_through(tables)
        # counted: the whole window [first exposure, + window_days) lies within the data
        last_start = through - dt.timedelta(days=window_days - 1) if through else None
        is_counted = (F.col("first_exposure") <= F.lit(last_start)) if last_start else F.lit(False)
        counted = users.filter(is_counted)
        per_variant = {r["variant"]: (r["users"], r["open"], r["last_exposure"]) for r in users.groupBy("variant").agg(
            F.count(F.lit(1)).alias("users"), F.sum(F.when(is_counted, 0).otherwise(1)).alias("open"),
            F.max("first_exposure").alias("last_exposure")).collect()}
        moments = variant_moments(per_user_outcomes(counted, valued_purchases(tables), window_days, cuped_days))
    finally:
        users.unpersist()
    exposed = {v: per_variant.get(v, (0, 0, None))[0] for v in weights}
    last_exposure = max((e for *_, e in per_variant.values() if e), default=None)
    complete_on = last_exposure + dt.timedelta(days=window_days - 1) if last_exposure else None
    report = {
        "experiment": name, "control": experiment.variants[0].name, "nights": nights,
        "window_days": window_days, "exposure_source": source,
        "coverage": {
            "data_through": through.isoformat() if through else None,
            "users_counted": sum(m["converted"].y.n for m in moments.values()),
            "users_window_open": sum(open_ for _, open_, _ in per_variant.values()),
            # the day the data must cover for every user exposed so far to be counted
            "complete_when_data_through": complete_on.isoformat() if complete_on else None,
            "complete": bool(complete_on and through and through >= complete_on)},
        "sample_ratio": {**sample_ratio_check(exposed, weights), "counted_on": source, "users": exposed},
    }
    if exposure is not None:
        report["exposures"] = exposure
    report["variants"], report["cuped"] = _variants(moments, weights, per_variant, cuped_days, effect)
    return report


def _exposure_summary(users: DataFrame, exported: DataFrame) -> dict:
    """What the ``exposures`` table says that the exports cannot: mismatched and missing users."""
    row = (users.join(exported.select("user_id", F.lit(True).alias("exported")), "user_id", "full")
           .agg(F.sum(F.when(F.col("shown_other"), 1).otherwise(0)).alias("shown_other_variant"),
                F.sum(F.when(F.col("variant").isNotNull() & F.col("exported").isNull(), 1).otherwise(0))
                .alias("exposed_not_exported"),
                F.sum(F.when(F.col("variant").isNull(), 1).otherwise(0)).alias("exported_not_exposed"))
           .first())
    return {k: int(row[k] or 0) for k in ("shown_other_variant", "exposed_not_exported", "exported_not_exposed")}


def _variants(moments, weights, per_variant, cuped_days, effect) -> tuple[dict, dict | None]:
    """Per variant: counts, means, uplifts (raw and CUPED) and power against the control."""
    empty = {c: Paired(Moments(0, 0.0, 0.0), Moments(0, 0.0, 0.0), 0.0) for c in METRICS.values()}
    groups = {v: moments.get(v, empty) for v in weights}
    adjusted, cuped_summary = {}, None
    if cuped_days:
        cuped_summary = {"pre_days": cuped_days, "theta": {}, "variance_reduction": {}}
        for name, column in METRICS.items():
            paired = [g[column] for g in groups.values()]
            theta = cuped_theta(paired)
            n = sum(p.y.n for p in paired)
            grand = sum(p.x.total for p in paired) / n if n else 0.0
            adjusted[column] = {v: cuped(g[column], theta, grand) for v, g in groups.items()}
            raw = sum(p.y.variance * (p.y.n - 1) for p in paired if p.y.n >= 2)
            after = sum(m.variance * (m.n - 1) for m in adjusted[column].values() if m.n >= 2)
            cuped_summary["theta"][name] = theta
            cuped_summary["variance_reduction"][name] = 1 - after / raw if raw > 0 else 0.0
    control = next(iter(weights))
    shares = {v: w / sum(weights.values()) for v, w in weights.items()}
    variants = {}
    for variant, g in groups.items():
        entry = {"users": g["converted"].y.n, "users_window_open": per_variant.get(variant, (0, 0, None))[1],
                 "conversion": g["converted"].y.mean, "revenue_per_user": g["revenue"].y.mean,
                 "revenue": g["revenue"].y.total}
        if variant != control:
            entry["uplift"], entry["cuped_uplift"], entry["power"] = {}, {}, {}
            for name, column in METRICS.items():
                c, t = groups[control][column].y, g[column].y
                entry["uplift"][name] = relative_uplift(c, t)
                if cuped_days:
                    c, t = adjusted[column][control], adjusted[column][variant]
                    entry["cuped_uplift"][name] = relative_uplift(c, t)
                binary = column == "converted" and not cuped_days  # CUPED's adjusted values are not 0/1
                entry["power"][name] = {  # of the estimate the report leads with (CUPED when on)
                    "detectable_effect": detectable_effect(c, t, binary),
                    "effect": effect,
                    "users_needed": users_needed(c, effect, shares[control], shares[variant], binary)}
            if not cuped_days:
                del entry["cuped_uplift"]
        variants[variant] = entry
    return variants, cuped_summary


def report_table(report: dict) -> str:
    """The report as a table for the console."""
    lead = "cuped_uplift" if report["cuped"] else "uplift"
    rows = []
    for variant, e in report["variants"].items():
        row = {"variant": variant, "users": e["users"], "window open": e["users_window_open"],
               "conversion": f"{e['conversion']:.4f}", "revenue/user": f"{e['revenue_per_user']:.2f}"}
        for name, label in (("conversion", "conversion uplift"), ("revenue_per_user", "revenue uplift")):
            u = e.get(lead, {}).get(name)
            p = e.get("power", {}).get(name, {})
            row[label] = ("control" if variant == report["control"] else "n/a" if not u or u["uplift"] is None
                          else f"{u['uplift']:+.1%} [{u['low']:+.1%}, {u['high']:+.1%}]")
            if variant != report["control"]:
                mde = p.get("detectable_effect")
                row[f"{label.split()[0]} MDE"] = "n/a" if mde is None else f"{mde:.1%}"
        rows.append(row)
    srm, coverage, nights = report["sample_ratio"], report["coverage"], report["nights"]
    lines = [f"experiment {report['experiment']}: {len(nights)} nights ({nights[0]}..{nights[-1]}); each user's "
             f"purchases over {report['window_days']} days from their first exposure (from the "
             f"{report['exposure_source']})",
             pd.DataFrame(rows).to_string(index=False),
             f"95% confidence intervals (delta method) against {report['control']}"
             + (f", CUPED-adjusted by the {report['cuped']['pre_days']} days before exposure (variance "
                f"-{report['cuped']['variance_reduction']['conversion']:.0%} on conversion)" if report["cuped"] else "")
             + "; MDE: the smallest uplift these users detect (5% level, 80% power)",
             f"counted: {coverage['users_counted']} users whose window the data (through "
             f"{coverage['data_through']}) covers; {coverage['users_window_open']} still open"
             + ("" if coverage["complete"] else
                f": the report is complete once the data covers {coverage['complete_when_data_through']}")]
    verdict = ("MISMATCH: the split is not what the weights say; do not trust the uplifts"
               if srm["mismatch"] else "ok")
    lines.append(f"sample ratio on the {srm['counted_on']}: chi2 {srm['chi2']:.2f}, p {srm['p_value']:.3g}: {verdict}")
    if report["exposure_source"] == "exports":
        lines.append("  (only checked against the export, made by the same hash: add the website's exposures "
                     "table to the data to check what users were actually shown)")
    else:
        e = report["exposures"]
        lines.append(f"  {e['shown_other_variant']} users were shown a variant other than their assignment "
                     f"(analysed in their assignment); {e['exposed_not_exported']} exposed users were not exported, "
                     f"{e['exported_not_exposed']} exported users were never exposed (not counted)")
    return "\n".join(lines)
