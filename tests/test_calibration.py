"""The published score is a purchase probability: Platt scaling on weighted unsampled pairs
recovers a known link, a useless model gets the base rate, and the probability no longer
depends on how many negatives the model was trained with."""
import copy
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from salerank.metamodel.calibration import calibration_check, fit_calibration


def draw_pairs(rng, n, slope, intercept, rate):
    """``n`` pairs with log-odds z and purchases at expit(slope z + intercept), every purchase
    kept and the other pairs sampled at ``rate`` (weight 1 / rate), as ``day_pairs`` does."""
    z = rng.normal(0, 1.5, n)
    label = rng.random(n) < expit(slope * z + intercept)
    kept = label | (rng.random(n) < rate)
    pairs = pd.DataFrame({"label": label[kept].astype(int), "weight": np.where(label[kept], 1.0, 1 / rate)})
    return z[kept], pairs, int(label.sum())


def test_platt_scaling_on_weighted_pairs_recovers_the_true_link():
    rng = np.random.default_rng(0)
    z, pairs, _ = draw_pairs(rng, 2_000_000, 1.3, -7.5, 0.02)  # about 1e-3 per pair, 5 % kept
    slope, intercept = fit_calibration(z, pairs["label"], pairs["weight"])
    assert slope == pytest.approx(1.3, rel=0.1) and intercept == pytest.approx(-7.5, abs=0.3)
    # on a fresh day: the expected purchases are those observed, within Poisson noise
    z, pairs, observed = draw_pairs(rng, 2_000_000, 1.3, -7.5, 0.02)
    summary, table = calibration_check(expit(slope * z + intercept), pairs)
    assert summary["observed_purchases"] == observed
    assert summary["expected_over_observed"] == pytest.approx(1.0, abs=0.08)
    assert summary["pairs"] == pytest.approx(2_000_000, rel=0.01)  # the weights stand for every pair
    assert np.allclose(table["predicted"], table["observed_rate"], rtol=0.35, atol=2e-4)
    assert table["observed_rate"].is_monotonic_increasing


def test_a_useless_model_gets_the_base_rate():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 400_000)
    label = rng.random(len(z)) < 1e-3  # nothing to do with z
    weights = np.ones(len(z))
    slope, intercept = fit_calibration(z, label, weights)
    probability = expit(slope * z + intercept)
    assert abs(slope) < 0.1
    assert probability.sum() == pytest.approx(label.sum(), rel=0.02)  # the fit's score equation
    assert probability.max() / probability.min() < 2.5


def test_log_odds_that_cannot_be_fitted_get_the_base_rate_or_a_finite_fit_not_an_error():
    """One log-odds for every pair (slope and intercept cannot be told apart: a singular
    Hessian, which stopped a training on the scale benchmark's Zipf world), and log-odds of two
    values that separate the purchases (no finite maximum)."""
    rng = np.random.default_rng(2)
    label = rng.random(10_000) < 0.01
    slope, intercept = fit_calibration(np.full(len(label), 0.3), label, np.ones(len(label)))
    assert slope == 0 and expit(intercept) == pytest.approx(label.mean())
    separating = np.where(label, 1.0, 0.0)
    slope, intercept = fit_calibration(separating, label, np.ones(len(label)))
    assert np.isfinite([slope, intercept]).all() and slope > 0
    assert expit(slope + intercept) > 0.99 and expit(intercept) < 0.01


@pytest.mark.slow
def test_the_probability_does_not_depend_on_the_negatives_ratio(tables, catalog, config):
    """Trained with 2 or with 10 negatives per purchase, the raw sigmoid differs by several
    times; the calibrated probabilities of the same unsampled pairs agree, and their sum is the
    purchases of those days (the fit's score equation)."""
    from salerank import recommenders as recs
    from salerank.metamodel.training import calibration_pairs, fit_metamodel
    from salerank.metamodel.signals import signals_from_config

    settings = copy.deepcopy(config)
    settings["image_labelling"]["enabled"] = False
    settings["metamodel"].update({"train_days": 5, "validation_days": 2, "C": 1.0})
    prototypes = recs.from_config(settings, with_images=False)
    as_of = dt.date.fromisoformat(str(tables.purchases.agg({"ts": "max"}).first()[0].date()))
    cache, raw, published = {}, {}, {}
    for ratio in (2, 10):
        settings["metamodel"].update({"negatives_per_purchase": ratio, "negative_ratios": [ratio]})
        model, metrics, _ = fit_metamodel(tables, catalog, prototypes, as_of, settings, {})
        days = [as_of - dt.timedelta(days=d) for d in (2, 1)]
        pairs = calibration_pairs(tables, catalog, prototypes + signals_from_config(settings),
                                  model.feature_names, days, settings, cache)
        features = pairs[model.feature_names].to_numpy(dtype=float)
        raw[ratio] = model.predict_proba(features)
        published[ratio] = model.probability(model.log_odds(features))
        assert published[ratio].sum() == pytest.approx(pairs["label"].sum(), rel=0.01)
        assert (pairs["weight"] == 1).all()  # a small world: every pair, none sampled
    assert raw[2].mean() > 2.5 * raw[10].mean()  # the sampling shows in the raw sigmoid
    assert published[2].mean() == pytest.approx(published[10].mean(), rel=0.05)
    assert published[10].mean() < raw[10].mean() / 20  # two orders of magnitude below it
