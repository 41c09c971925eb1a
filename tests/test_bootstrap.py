"""The backtest's intervals: a bootstrap over (user, day) pairs, checked on simulations whose
answer is known (numpy and pandas only: fast)."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from salerank.conf import ConfigError
from salerank.jobs import replay
from salerank.metamodel.evaluation import PER_USER, Resampled, bootstrap_means, percentile_interval

SIMULATIONS = 400  # coverage rates within +-0.03 of 0.95 (2.75 standard errors)


def _per_user(values: dict[str, np.ndarray], day=dt.date(2025, 3, 1)) -> pd.DataFrame:
    """Rows of per_user_metrics: every metric of a strategy set to its values, one (user, day)
    per position."""
    frames = []
    for strategy, v in values.items():
        frame = pd.DataFrame({"day": day, "strategy": strategy, "user_id": [f"u{i}" for i in range(len(v))]})
        frames.append(frame.assign(**{m: v for m in PER_USER}))
    return pd.concat(frames, ignore_index=True)


def test_interval_covers_the_true_mean_at_its_nominal_rate():
    """Recall of user-days with 1-4 purchases, each found with probability 0.2: the mean of
    per-user recall is 0.2, and its interval covers 0.2 about 95 % of the time; the width
    matches the normal approximation's, so neither a narrower nor a wider interval passes."""
    rng = np.random.default_rng(1)
    n, p, covered, widths = 300, 0.2, 0, []
    for _ in range(SIMULATIONS):
        relevant = 1 + rng.poisson(1.0, n).clip(max=3)
        recall = rng.binomial(relevant, p) / relevant
        low, high = percentile_interval(bootstrap_means(recall[:, None], 500, rng))[:, 0]
        covered += low <= p <= high
        widths.append((high - low) / (2 * 1.96 * recall.std() / np.sqrt(n)))
    assert 0.92 <= covered / SIMULATIONS <= 0.98
    assert np.mean(widths) == pytest.approx(1.0, abs=0.05)


def _two_equal_models(rng, n):
    """Two models of the same quality, whose hits on a user-day share its difficulty (so a
    paired comparison is much tighter than two separate intervals)."""
    findable = rng.beta(0.2, 0.8, n)
    return (rng.random(n) < findable).astype(float), (rng.random(n) < findable).astype(float)


def test_paired_interval_of_two_equal_models_covers_zero_at_its_nominal_rate():
    """Unpaired resampling of the same data covers 0 about 99.4 % of the time here (its
    interval is 1.4 times too wide), and so fails the upper bound."""
    rng = np.random.default_rng(2)
    covered = 0
    for i in range(SIMULATIONS):
        a, b = _two_equal_models(rng, 300)
        low, high = Resampled(_per_user({"a": a, "b": b}), 500, seed=i).difference("a", "b")["hit_rate"]
        covered += low <= 0 <= high
    assert 0.92 <= covered / SIMULATIONS <= 0.98


def test_a_planted_difference_is_detected_and_two_purchases_are_not():
    rng = np.random.default_rng(3)
    n = 2000
    findable = rng.beta(0.5, 2.0, n)  # mean 0.2
    draw = rng.random(n)
    a = (draw < findable).astype(float)
    b = (draw < findable + 0.05).astype(float)  # finds 5 points more: true B - A = 0.05
    resampled = Resampled(_per_user({"a": a, "b": b}), 1000, seed=0)
    low, high = resampled.difference("a", "b")["recall"]
    assert 0 < low < 0.05 < high
    assert replay.verdict(low, high) == "higher"
    assert replay.verdict(*resampled.difference("b", "a")["recall"]) == "lower"

    # 663 user-days (H&M's), B wins 11 and loses 9 against A: two purchases more, not a win
    a = np.zeros(663)
    a[:40] = 1
    b = a.copy()
    b[:9] = 0
    b[40:51] = 1
    assert b.sum() - a.sum() == 2
    low, high = Resampled(_per_user({"a": a, "b": b}), 1000, seed=0).difference("a", "b")["recall"]
    assert low < 0 < high and replay.verdict(low, high) == "no detectable difference"


def test_the_interval_is_of_the_published_estimator_not_the_pooled_ratio():
    """Half the user-days bought one sale and it was found (recall 1), half bought ten and none
    was found (recall 0): the published mean of per-user recall is 0.5, the pooled ratio of
    hits to purchases 1/11; the interval is around the first."""
    recall = np.repeat([1.0, 0.0], 100)
    (low,), (high,) = percentile_interval(bootstrap_means(recall[:, None], 1000, np.random.default_rng(0)))
    half_width = 1.96 * 0.5 / np.sqrt(200)
    assert low == pytest.approx(0.5 - half_width, abs=0.02) and high == pytest.approx(0.5 + half_width, abs=0.02)


def test_a_unit_without_a_value_is_left_out_of_that_column_only():
    values = np.array([[1.0, 2.0], [np.nan, 2.0], [1.0, np.nan], [1.0, 2.0]])
    means = bootstrap_means(values, 200, np.random.default_rng(0))
    assert np.all((means == [1.0, 2.0]) | np.isnan(means))  # NaN: a resample drew no value
    assert np.isnan(means).mean() < 0.05


def test_resamples_are_seeded():
    frame = _per_user({"a": np.arange(50) % 3 / 2, "b": np.arange(50) % 5 / 4})
    first, again, other = (Resampled(frame, 300, seed=s).replicated for s in (7, 7, 8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def _backtest_rows(rng) -> pd.DataFrame:
    """Per-user rows of two days, every segment, the meta-model clearly better than popularity
    and content the same as popularity."""
    frames = []
    for day in (dt.date(2025, 3, 1), dt.date(2025, 3, 2)):
        findable = rng.beta(0.3, 1.2, 400)
        draw = rng.random(400)
        hits = {"metamodel": draw < findable + 0.15, "popularity": draw < findable,
                "content": rng.random(400) < findable}
        for segment in replay.SEGMENTS:
            part = slice(None) if segment in ("overall", "new_sales") else slice(0, 200)
            frames.append(_per_user({s: h[part].astype(float) for s, h in hits.items()}, day)
                          .assign(segment=segment))
    return pd.concat(frames, ignore_index=True)


def test_metrics_document_has_an_interval_for_every_mean_and_the_comparisons():
    per_user = _backtest_rows(np.random.default_rng(4))
    strategies = ["metamodel", "popularity", "content"]
    cover = pd.DataFrame([(d, s, 0.5) for d in per_user["day"].unique() for s in strategies],
                         columns=["day", "strategy", "coverage"])
    pairs = replay.comparison_pairs(["popularity", "content"], [("popularity", "content")])
    assert pairs == [("popularity", "metamodel"), ("content", "metamodel"), ("popularity", "content")]
    overall, daily = replay._summaries(per_user, strategies, 10, 1000, seed=42)
    doc = replay._metrics_document(overall, daily, cover, 10, "2025-03-01", "2025-03-02", 1, "all",
                                        2, {}, pairs, 1000, 42)
    entries = [entry[segment] for entry in doc["models"].values() for segment in replay.SEGMENTS]
    entries += [e for entry in doc["models"].values() for e in entry["per_day"].values()]
    assert len(entries) == 3 * (len(replay.SEGMENTS) + 2)
    for entry in entries:
        assert set(entry["ci95"]) == {f"{m}@10" for m in PER_USER}
        for name, (low, high) in entry["ci95"].items():
            assert low <= entry[name] <= high and low < high

    meta_pop = doc["comparisons"]["metamodel - popularity"]["overall"]["ndcg@10"]
    models = doc["models"]
    assert meta_pop["difference"] == models["metamodel"]["overall"]["ndcg@10"] - models["popularity"]["overall"]["ndcg@10"]
    assert meta_pop["ci95"][0] > 0 and meta_pop["verdict"] == "higher"
    same = doc["comparisons"]["content - popularity"]
    assert same["overall"]["ndcg@10"]["verdict"] == "no detectable difference"
    assert set(same) == {"a", "b", *replay.SEGMENTS}

    text = replay.comparison_text(doc, [("popularity", "content")])
    assert "content - popularity" in text and "no detectable difference" in text and "metamodel" not in text
    assert "metamodel higher" in replay.comparison_text(doc)
    low, high = models["metamodel"]["overall"]["ci95"]["recall@10"]
    assert f"[{low:.4f}, {high:.4f}]" in replay.overall_text(doc)

    table = replay._per_day_table(daily, cover, 10)
    row = table[(table.strategy == "content") & (table.segment == "overall")].iloc[0]
    assert [row["ndcg@10_low"], row["ndcg@10_high"]] == models["content"]["per_day"][str(row["day"])]["ci95"]["ndcg@10"]


def test_an_unknown_model_to_compare_is_refused():
    with pytest.raises(ConfigError, match="'nope'"):
        replay.comparison_pairs(["popularity"], [("metamodel", "nope")])
