"""The A/B report's statistics: intervals that cover the true uplift as often as they claim,
CUPED and power figures that do what they say, windows that a treatment cannot stretch, and a
sample-ratio check that fires on a broken split and only then."""
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from salerank.jobs.ab_report import (COVARIATES, Moments, Paired, cuped, cuped_theta, detectable_effect,
                                     relative_uplift, sample_ratio_check, users_needed)


def moments(values) -> Moments:
    values = np.asarray(values, dtype=float)
    return Moments(len(values), float(values.sum()), float((values ** 2).sum()))


@pytest.mark.parametrize("metric", ["conversion", "revenue"])
def test_delta_method_intervals_cover_the_true_uplift_95_percent_of_the_time(metric):
    rng = np.random.default_rng(0)
    p_control, p_treatment, n, trials = 0.10, 0.12, 4000, 600

    def draw(p):  # revenue: buyers spend a skewed amount, the same distribution in both arms
        bought = rng.random(n) < p
        return bought * (rng.lognormal(4, 1, n) if metric == "revenue" else 1.0)

    true_uplift = p_treatment / p_control - 1
    covered = [(u := relative_uplift(moments(draw(p_control)), moments(draw(p_treatment))))["low"]
               <= true_uplift <= u["high"] for _ in range(trials)]
    # 600 trials: a 95 % interval covers between 93 % and 97 % of the time with high probability
    assert 0.93 <= np.mean(covered) <= 0.97


def test_no_effect_gives_an_interval_around_zero_and_a_large_p_value():
    rng = np.random.default_rng(1)
    control, treatment = (moments(rng.random(20000) < 0.1) for _ in range(2))
    uplift = relative_uplift(control, treatment)
    assert uplift["low"] < 0 < uplift["high"] and uplift["p_value"] > 0.05


def test_sample_ratio_mismatch():
    assert sample_ratio_check({"a": 5000, "b": 15000}, {"a": 1, "b": 3})["p_value"] == pytest.approx(1.0)
    mild = sample_ratio_check({"a": 1000, "b": 1100}, {"a": 1, "b": 1})  # p ~ 0.03: chance happens
    assert 0.01 < mild["p_value"] < 0.05 and not mild["mismatch"]
    broken = sample_ratio_check({"a": 10000, "b": 10600}, {"a": 1, "b": 1})  # a lost 3 % of its users
    assert broken["p_value"] < 0.001 and broken["mismatch"]
    assert broken["expected_share"] == {"a": 0.5, "b": 0.5}



def paired(y, x) -> Paired:
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    return Paired(moments(y), moments(x), float((x * y).sum()))


def cuped_uplift(control: Paired, treatment: Paired) -> dict:
    theta = cuped_theta([control, treatment])
    grand = (control.x.total + treatment.x.total) / (control.y.n + treatment.y.n)
    return relative_uplift(cuped(control, theta, grand), cuped(treatment, theta, grand))


@pytest.mark.parametrize("true_uplift", [0.0, 0.15])
def test_cuped_intervals_cover_the_truth_and_are_narrower(true_uplift):
    """Users differ in how much they buy (a gamma-distributed rate), so their pre-period
    predicts their window. CUPED's interval must cover the true uplift of conversion as often
    as the raw one (95 %, the A/A case included) while being narrower."""
    rng = np.random.default_rng(4)
    shape, scale, n, trials = 0.5, 0.4, 3000, 400

    def arm(boost):
        rate = rng.gamma(shape, scale, n)
        before = rng.poisson(rate * 4)  # purchases over a pre-period four windows long
        # the treatment multiplies the buying rate by ``boost``
        return paired(rng.random(n) < 1 - np.exp(-rate * boost), before)

    # conversion 1 - E[exp(-a λ)] = 1 - (1 + a·scale)^-shape for a gamma rate λ
    boost = 1.0
    if true_uplift:  # the boost whose conversion is (1 + true_uplift) times the control's
        from scipy.optimize import brentq
        control_rate = 1 - (1 + scale) ** -shape
        boost = brentq(lambda a: 1 - (1 + a * scale) ** -shape - control_rate * (1 + true_uplift), 1, 10)
    raw_covered, cuped_covered, widths = [], [], []
    for _ in range(trials):
        control, treatment = arm(1.0), arm(boost)
        raw, adjusted = relative_uplift(control.y, treatment.y), cuped_uplift(control, treatment)
        raw_covered.append(raw["low"] <= true_uplift <= raw["high"])
        cuped_covered.append(adjusted["low"] <= true_uplift <= adjusted["high"])
        widths.append((adjusted["high"] - adjusted["low"]) / (raw["high"] - raw["low"]))
    # 400 trials: a 95 % interval covers between 92 % and 98 % of the time with high probability
    assert 0.92 <= np.mean(raw_covered) <= 0.98
    assert 0.92 <= np.mean(cuped_covered) <= 0.98
    assert np.mean(widths) < 0.95  # narrower: the pre-period explains part of the variance


def test_cuped_without_a_useful_pre_period_changes_nothing():
    rng = np.random.default_rng(5)
    y, x = rng.random(5000) < 0.1, np.zeros(5000)
    group = paired(y, x)
    assert cuped_theta([group, group]) == 0.0
    assert cuped(group, 0.0, 0.0) == group.y


def test_the_detectable_effect_is_detected_80_percent_of_the_time():
    """Plant exactly the minimal detectable effect the report gives for these sample sizes:
    the test must reject about 80 % of the time (its power), and about 5 % with no effect."""
    rng = np.random.default_rng(6)
    n, p, trials = 4000, 0.10, 1000
    exact = Moments(n, n * p, n * p)  # a 0/1 metric at exactly p
    mde = detectable_effect(exact, exact, binary=True)
    assert 0.1 < mde < 0.3

    def rejections(uplift):
        return np.mean([relative_uplift(moments(rng.random(n) < p), moments(rng.random(n) < p * (1 + uplift)))
                        ["p_value"] < 0.05 for _ in range(trials)])

    assert 0.77 <= rejections(mde) <= 0.88  # see test_users_needed_reach_80_percent_power
    assert 0.03 <= rejections(0.0) <= 0.07


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.25, 0.75)])
def test_users_needed_reach_80_percent_power(shares):
    rng = np.random.default_rng(7)
    p, effect, trials = 0.08, 0.2, 800
    total = users_needed(Moments(10000, 10000 * p, 10000 * p), effect, *shares, binary=True)
    n_control, n_treatment = round(total * shares[0]), round(total * shares[1])
    detected = [relative_uplift(moments(rng.random(n_control) < p),
                                moments(rng.random(n_treatment) < p * (1 + effect)))["p_value"] < 0.05
                for _ in range(trials)]
    # at least the promised 80 %; the normal approximation errs slightly on the safe side
    # (82-85 % in 2,000-trial runs), never by asking for many more users than needed
    assert 0.77 <= np.mean(detected) <= 0.88


def test_a_treatment_that_only_raises_activity_shows_no_uplift(spark):
    """The treatment raises each night's chance of being active (exported) from 10 % to 13 %
    and does nothing to purchases (3 % a day, for everyone). A window that ran to each user's
    last exposure would give the treatment a longer window and a clear uplift (computed here,
    so that this simulation is shown to be one that fools it); the fixed window from the first
    exposure must show none."""
    from salerank.jobs.ab_report import per_user_outcomes

    rng = np.random.default_rng(8)
    n, nights, start = 40000, 28, dt.date(2025, 1, 1)
    variant = np.where(np.arange(n) % 2, "treatment", "control")
    active = rng.random((n, nights)) < np.where(variant == "treatment", 0.13, 0.10)[:, None]
    bought = rng.random((n, nights + 7)) < 0.03
    exposed = active.any(axis=1)
    first, last = active.argmax(axis=1), nights - 1 - active[:, ::-1].argmax(axis=1)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "variant": variant,
                          "first_exposure": [start + dt.timedelta(days=int(d)) for d in first]})[exposed]
    rows, days = np.nonzero(bought)
    purchases = pd.DataFrame({"user_id": [f"u{i}" for i in rows], "value": 1.0,
                              "day": [start + dt.timedelta(days=int(d)) for d in days]})
    outcomes = per_user_outcomes(spark.createDataFrame(users), spark.createDataFrame(purchases), 7).toPandas()

    fixed = {v: moments(outcomes.loc[outcomes.variant == v, "converted"]) for v in ("control", "treatment")}
    assert fixed["control"].n + fixed["treatment"].n == exposed.sum()
    uplift = relative_uplift(fixed["control"], fixed["treatment"])
    print(f"fixed window: {uplift['uplift']:+.1%} [{uplift['low']:+.1%}, {uplift['high']:+.1%}]")
    assert uplift["low"] < 0 < uplift["high"]

    stretched = np.array([bought[i, first[i]:last[i] + 7].any() for i in range(n)])
    old = relative_uplift(*(moments(stretched[exposed & (variant == v)]) for v in ("control", "treatment")))
    print(f"to the last exposure: {old['uplift']:+.1%} [{old['low']:+.1%}, {old['high']:+.1%}]")
    assert old["low"] > 0.05  # the biased window sees an uplift that is not there


@pytest.fixture(scope="module")
def world_outcomes(spark):
    """A/A material from a generated world of 4,000 users: each user who visits during ten
    experiment nights is exposed at their first visit; their outcomes over 7 days from it and
    over the 14 days before, computed once by the report's own Spark code (an outcome does not
    depend on the variant)."""
    from types import SimpleNamespace

    from salerank.jobs.ab_report import per_user_outcomes, valued_purchases
    from salerank.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(n_users=4000, n_days=30, sales_per_day=5), seed=11)
    visits = world.visits.assign(day=pd.to_datetime(world.visits.ts).dt.date)
    first_day = visits.day.min() + dt.timedelta(days=14)
    nights = visits[(visits.day >= first_day) & (visits.day < first_day + dt.timedelta(days=10))]
    users = (nights.groupby("user_id").day.min().rename("first_exposure").reset_index()
             .assign(variant="any"))
    tables = SimpleNamespace(sales=spark.createDataFrame(world.sales[["sale_id", "price"]]),
                             purchases=spark.createDataFrame(world.purchases.assign(ts=pd.to_datetime(world.purchases.ts))))
    return per_user_outcomes(spark.createDataFrame(users), valued_purchases(tables), 7, 14).toPandas()


@pytest.mark.parametrize("metric", ["converted", "revenue"])
def test_an_aa_test_on_the_world_covers_zero_at_its_nominal_rate(world_outcomes, metric):
    """400 A/A experiments: the world's users split by 400 salts (the report's own hash) with no
    treatment at all. Raw and CUPED intervals must cover 0 about 95 % of the time, and CUPED
    must not widen them. The variance reduction measured here is quoted in docs/exports.md."""
    from salerank.jobs.experiments import bucket

    data = world_outcomes
    y, x = data[metric].to_numpy(), data[COVARIATES[metric]].to_numpy()
    assert len(data) > 2000 and 0.05 < (data.converted > 0).mean() < 0.5
    raw_covered, cuped_covered, reductions = [], [], []
    for trial in range(400):
        treated = np.array([bucket(f"aa-{trial}", u) < 0.5 for u in data.user_id])
        control, treatment = paired(y[~treated], x[~treated]), paired(y[treated], x[treated])
        raw, adjusted = relative_uplift(control.y, treatment.y), cuped_uplift(control, treatment)
        raw_covered.append(raw["low"] <= 0 <= raw["high"])
        cuped_covered.append(adjusted["low"] <= 0 <= adjusted["high"])
        reductions.append(1 - ((adjusted["high"] - adjusted["low"]) / (raw["high"] - raw["low"])) ** 2)
    print(f"{metric}: raw coverage {np.mean(raw_covered):.3f}, CUPED coverage {np.mean(cuped_covered):.3f}, "
          f"variance reduction {np.mean(reductions):.1%}")
    assert 0.92 <= np.mean(raw_covered) <= 0.98
    assert 0.92 <= np.mean(cuped_covered) <= 0.98
    assert np.mean(reductions) > 0


def test_a_planted_uplift_on_the_world_is_recovered(world_outcomes):
    """Treatment users who did not convert are made to convert with probability 0.2: the true
    uplift of conversion is (p + 0.2 (1 - p)) / p - 1 for the world's conversion p. Over 300
    splits the 95 % interval covers it at the nominal rate."""
    from salerank.jobs.experiments import bucket

    rng = np.random.default_rng(9)
    converted = (world_outcomes.converted > 0).to_numpy()
    p = converted.mean()
    truth = (p + 0.2 * (1 - p)) / p - 1
    covered = []
    for trial in range(300):
        treated = np.array([bucket(f"planted-{trial}", u) < 0.5 for u in world_outcomes.user_id])
        planted = converted | (treated & (rng.random(len(converted)) < 0.2))
        u = relative_uplift(moments(planted[~treated]), moments(planted[treated]))
        covered.append(u["low"] <= truth <= u["high"])
    assert 0.91 <= np.mean(covered) <= 0.99


def _publish_experiment(spark, out: str, exported: pd.DataFrame, order=("control", "treatment")) -> None:
    """Publish one night per date of ``exported`` (``user_id, variant, night``), each listing
    the experiment ``exp`` (salt ``s``, weights 1:1) in its manifest, as the nightly run does."""
    from salerank.jobs.publish import Night

    listed = {"exp": {"salt": "s", "order": list(order),
                      "variants": {v: {"strategy": "popularity", "weight": 1, "users": 0} for v in order}}}
    for night, users in exported.groupby("night"):
        publishing = Night(spark, out, night)
        for variant in order:
            lines = [(json.dumps({"user_id": u, "variant": variant, "run_date": night.isoformat()}),)
                     for u in users.loc[users.variant == variant, "user_id"]]
            publishing.write_jsonl(spark.createDataFrame(lines, "value string"), "exports", "exp", f"{variant}.jsonl")
        publishing.commit({"experiments": listed})


def test_exposures_drive_the_sample_ratio_check_and_the_counts(spark, tmp_path):
    """1,200 users split 1:1 by the experiment's hash, each exported on one of three nights.
    The website lost 15 % of the treatment's users (never shown anything), showed 20 users the
    other variant, and exposed 10 users who were never exported. Counted on the exposures, the
    split is broken and the report says so; counted on the exports it cannot see it. The data
    ends on the night after the last: the users of the last night are still open."""
    from salerank.features.loading import Tables
    from salerank.jobs.ab_report import ab_report, report_table
    from salerank.jobs.experiments import Experiment, Variant, variant_of

    rng = np.random.default_rng(10)
    nights = [dt.date(2025, 1, d) for d in (1, 2, 3)]
    experiment = Experiment("exp", "s", nights[0], nights[-1],
                            (Variant("control", "popularity", 1), Variant("treatment", "popularity", 1)))
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(1200)]})
    users["variant"] = [variant_of(experiment, u) for u in users.user_id]
    users["night"] = [nights[i] for i in rng.integers(0, 3, len(users))]
    out = (tmp_path / "out").as_uri()
    _publish_experiment(spark, out, users)

    lost = (users.variant == "treatment") & (rng.random(len(users)) < 0.15)
    shown = users[~lost].copy()
    swapped = shown.sample(20, random_state=1).index
    shown.loc[swapped, "variant"] = shown.loc[swapped, "variant"].map({"control": "treatment", "treatment": "control"})
    extra = pd.DataFrame({"user_id": [f"x{i}" for i in range(10)], "night": nights[0]})
    extra["variant"] = [variant_of(experiment, u) for u in extra.user_id]  # shown their assignment
    exposures = pd.concat([shown, extra]).assign(
        experiment="exp", ts=lambda f: pd.to_datetime(f.night) + pd.Timedelta(hours=20))
    purchases = pd.DataFrame({"user_id": ["u1", "u2"], "sale_id": "s1", "amount": 10.0,
                              "ts": pd.to_datetime(["2025-01-02 10:00", "2025-01-08 10:00"])})
    # the data ends on 8 January: the windows [night, night + 7) of the first two nights are whole
    data_end = dt.datetime(2025, 1, 8, 10)

    def tables(with_exposures: bool) -> Tables:
        return Tables(sales=spark.createDataFrame(pd.DataFrame({"sale_id": ["s1"], "price": [5.0]})),
                      sale_images=None, users=None, visits=None, purchases=spark.createDataFrame(purchases),
                      image_labels=None,
                      exposures=spark.createDataFrame(exposures[["user_id", "experiment", "variant", "ts"]])
                      if with_exposures else None,
                      last_events={"purchases": ("purchases.csv", data_end)})

    seen = ab_report(spark, tables(True), out, "exp", window_days=7, cuped_days=0)
    assert seen["exposure_source"] == "exposures"
    assert seen["sample_ratio"]["mismatch"] and seen["sample_ratio"]["counted_on"] == "exposures"
    assert seen["exposures"] == {"shown_other_variant": 20, "exposed_not_exported": 10,
                                 "exported_not_exposed": int(lost.sum())}
    exposed = pd.concat([users[~lost], extra])
    assert seen["sample_ratio"]["users"] == exposed.variant.value_counts().to_dict()
    still_open = exposed.night == nights[-1]
    assert seen["coverage"] == {"data_through": "2025-01-08", "users_counted": int((~still_open).sum()),
                                "users_window_open": int(still_open.sum()),
                                "complete_when_data_through": "2025-01-09", "complete": False}
    assert {v: e["users"] for v, e in seen["variants"].items()} == \
        exposed[~still_open].variant.value_counts().to_dict()
    printed = report_table(seen)
    assert "MISMATCH" in printed and "20 users were shown a variant other than their assignment" in printed

    blind = ab_report(spark, tables(False), out, "exp", window_days=7, cuped_days=0)
    assert blind["exposure_source"] == "exports" and not blind["sample_ratio"]["mismatch"]
    assert blind["sample_ratio"]["users"] == users.variant.value_counts().to_dict()
    assert "only checked against the export" in report_table(blind)


def test_only_nights_whose_manifest_lists_the_experiment_are_read(spark, tmp_path):
    """An export left beside a night whose manifest does not list the experiment (written by
    hand here, as an older run or a crashed tool might leave it) is not counted; the variants
    come back in their declared order."""
    from salerank.jobs.ab_report import exported_users, published_experiment
    from salerank.jobs.publish import Night

    out = (tmp_path / "out").as_uri()  # any Hadoop URI
    listed = {"exp": {"salt": "s", "order": ["b", "a"],
                      "variants": {"a": {"strategy": "popularity", "weight": 1, "users": 1},
                                   "b": {"strategy": "metamodel", "weight": 3, "users": 1}}}}
    night = Night(spark, out, dt.date(2025, 1, 1))
    for variant, user in (("a", "u1"), ("b", "u2")):
        line = json.dumps({"user_id": user, "variant": variant, "run_date": "2025-01-01"})
        night.write_jsonl(spark.createDataFrame([(line,)], "value string"), "exports", "exp", f"{variant}.jsonl")
    night.commit({"experiments": listed})
    Night(spark, out, dt.date(2025, 1, 2)).commit({"experiments": {}})
    stray = tmp_path / "out" / "exports" / "run_date=2025-01-02" / "exp"
    stray.mkdir(parents=True)
    (stray / "a.jsonl").write_text(json.dumps({"user_id": "u3", "variant": "a", "run_date": "2025-01-02"}) + "\n")
    experiment, nights = published_experiment(spark, out, "exp")
    assert nights == ["2025-01-01"]
    # the declared order (the control first), not the manifest's sorted keys
    assert [(v.name, v.weight) for v in experiment.variants] == [("b", 3.0), ("a", 1.0)]
    users = exported_users(spark, out, experiment, nights)
    assert sorted(r.user_id for r in users.collect()) == ["u1", "u2"]
