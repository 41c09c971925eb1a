"""Meta-model signals and ranks by hand, and the tuning of C and the negatives ratio."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from salerank.metamodel.features import NO_HISTORY_DAYS, DaysLeft, DaysOpen, PriceFit, Recency, with_ranks
from salerank.metamodel.training import subsample_negatives, train_metamodel
from salerank.recommenders import UserHistory


def history(items, bought=(), ages=None):
    return UserHistory.from_lists([np.array(items)], [np.isin(items, bought)], 4,
                                  None if ages is None else [np.array(ages, dtype=float)])


def test_sale_calendar_signals(hand_context):
    # every sale runs 2025-01-01..01-10 and the day is 01-05
    assert DaysOpen().fit(hand_context).score(history([0])).tolist() == [[4, 4, 4, 4]]
    assert DaysLeft().fit(hand_context).score(history([])).tolist() == [[5, 5, 5, 5]]


def test_price_fit_is_the_log_distance_to_the_users_usual_price(hand_context):
    model = PriceFit(purchase_weight=3.0).fit(hand_context)
    # visited s1 (100, weight 1) and bought s2 (200, weight 4)
    level = (np.log(100) + 4 * np.log(200)) / 5
    expected = -np.abs(np.log([100, 200, 300, 400]) - level)
    np.testing.assert_allclose(model.score(history([0, 1], bought=[1]))[0], expected)
    assert model.score(history([])).tolist() == [[0, 0, 0, 0]]  # no evidence either way


def test_recency_is_the_days_since_the_last_interaction(hand_context):
    model = Recency().fit(hand_context)
    assert model.score(history([0, 2], ages=[3.0, 1.5])).tolist() == [[1.5] * 4]
    assert model.score(history([], ages=[])).tolist() == [[NO_HISTORY_DAYS] * 4]


def test_ranks_within_the_user_share_ties():
    ranks = with_ranks({"x": np.array([[3.0, 1.0, 3.0, 0.0]])}, ("x",))["rank_x"]
    assert ranks.tolist() == [[1, 3, 1, 4]]


def examples(n_users=300, seed=0):
    """Per user and day one purchase and 10 drawn negatives; the purchase has higher 'useful'."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in (dt.date(2025, 1, d) for d in (1, 2, 3, 4)):
        for u in range(n_users):
            useful = rng.exponential(1.0, 11)
            useful[0] += 1.5
            rows.append(pd.DataFrame({"user_id": f"u{u}", "day": day, "label": [1] + [0] * 10,
                                      "draw": [0, *rng.permutation(10)], "useful": useful,
                                      "noise": rng.exponential(1.0, 11)}))
    return pd.concat(rows, ignore_index=True)


def test_subsampling_keeps_every_positive_and_ratio_negatives():
    data = examples(50)
    two = subsample_negatives(data, 2)
    assert two["label"].sum() == data["label"].sum() and (two["label"] == 0).sum() == 2 * data["label"].sum()


def test_tuning_searches_the_grid_on_the_validation_days():
    model, metrics, report = train_metamodel(examples(), ["useful", "noise"], (), C=(0.01, 1.0),
                                             negative_ratios=(2, 10), validation_days=2)
    assert len(report["grid"]) == 4 and {r["C"] for r in report["grid"]} == {0.01, 1.0}
    assert metrics["chosen_C"] in (0.01, 1.0) and metrics["chosen_negative_ratio"] in (2, 10)
    assert metrics["validation_auc"] == pytest.approx(max(r["auc"] for r in report["grid"]))
    assert metrics["validation_auc"] > 0.75 and model.coefficients_["useful"] > 3 * abs(model.coefficients_["noise"])
    table = report["reliability"]
    assert table["examples"].sum() == 2 * 300 * 11  # every validation example is in a bin
    # the observed rate rises with the prediction
    assert table["observed"].iloc[-1] > table["observed"].iloc[0]
