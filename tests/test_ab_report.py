"""The A/B report's statistics: intervals that cover the true uplift as often as they claim,
and a sample-ratio check that fires on a broken split and only then."""
import numpy as np
import pytest

from salerank.jobs.ab_report import Moments, relative_uplift, sample_ratio_check


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


def test_only_nights_whose_manifest_lists_the_experiment_are_read(spark, tmp_path):
    """An export left beside a night whose manifest does not list the experiment (written by
    hand here, as an older run or a crashed tool might leave it) is not counted."""
    import datetime as dt
    import json

    from salerank.jobs.ab_report import exposures
    from salerank.jobs.publish import Night

    out = (tmp_path / "out").as_uri()  # any Hadoop URI
    listed = {"exp": {"salt": "s", "variants": {"a": {"strategy": "popularity", "weight": 1, "users": 1},
                                                "b": {"strategy": "metamodel", "weight": 1, "users": 1}}}}
    night = Night(spark, out, dt.date(2025, 1, 1))
    for variant, user in (("a", "u1"), ("b", "u2")):
        line = json.dumps({"user_id": user, "variant": variant, "run_date": "2025-01-01"})
        night.write_jsonl(spark.createDataFrame([(line,)], "value string"), "exports", "exp", f"{variant}.jsonl")
    night.commit({"experiments": listed})
    Night(spark, out, dt.date(2025, 1, 2)).commit({"experiments": {}})
    stray = tmp_path / "out" / "exports" / "run_date=2025-01-02" / "exp"
    stray.mkdir(parents=True)
    (stray / "a.jsonl").write_text(json.dumps({"user_id": "u3", "variant": "a", "run_date": "2025-01-02"}) + "\n")
    users, weights, nights = exposures(spark, out, "exp")
    assert nights == ["2025-01-01"] and weights == {"a": 1, "b": 1}
    assert sorted(r.user_id for r in users.collect()) == ["u1", "u2"]
