"""Meta-model signals and ranks by hand, and the tuning of C and the negatives ratio."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from salerank.metamodel.signals import NO_HISTORY_DAYS, DaysLeft, DaysOpen, PriceFit, Recency, with_ranks
from salerank.metamodel.model import MetaModel
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
            rows.append(pd.DataFrame({"user_id": f"u{u}", "day": day, "sale_id": [f"s{i}" for i in range(11)],
                                      "label": [1] + [0] * 10,
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
    assert sorted((r["C"], r["negative_ratio"]) for r in report["grid"]) == [(0.01, 2), (0.01, 10), (1.0, 2), (1.0, 10)]
    assert metrics["validation_ndcg"] == pytest.approx(max(r["ndcg"] for r in report["grid"]))  # chosen by NDCG@10
    assert metrics["validation_auc"] > 0.75 and model.coefficients_["useful"] > 3 * abs(model.coefficients_["noise"])
    table = report["reliability"]
    assert table["examples"].sum() == 2 * 300 * 11  # every validation example is in a bin
    # the observed rate rises with the prediction
    assert table["observed"].iloc[-1] > table["observed"].iloc[0]


def twin_scores(n_users=300, seed=0):
    """Two scores of every sale, ``this`` and ``that``, that differ by a little: only the
    difference tells the purchase (0.3-0.4 for the one bought per user and day, 0-0.1 for its
    ten negatives, in log1p units); each alone mostly says the sale's level, which spreads
    over +-3 and tells nothing. By construction the bought sale's level is the mean of its
    list's and of every ratio's sample (negatives come in pairs centre +- spread, drawn pair
    by pair), so that no sample holds a chance correlation of level and purchase."""
    rng = np.random.default_rng(seed)
    lists = n_users * 4
    spread = np.repeat(rng.uniform(0.0, 3.0, (lists, 5)), 2, axis=1) * np.tile([1, -1], 5)
    level = rng.uniform(3.0, 6.0, (lists, 1)) + np.c_[np.zeros(lists), spread]
    gap = np.c_[rng.uniform(0.3, 0.4, lists), rng.uniform(0.0, 0.1, (lists, 10))]
    sale = np.argsort(rng.random((lists, 11)), axis=1)  # the bought sale is not always the first id
    return pd.DataFrame({
        "user_id": np.repeat(np.tile([f"u{u}" for u in range(n_users)], 4), 11),
        "day": np.repeat([dt.date(2025, 1, d) for d in (1, 2, 3, 4)], n_users * 11),
        "sale_id": np.char.add("s", sale.ravel().astype(str)), "label": np.tile([1] + [0] * 10, lists),
        "draw": np.tile(np.r_[0, np.arange(10)], lists),
        "this": np.expm1(level + gap).ravel(), "that": np.expm1(level).ravel()})


def first_in_every_list(model, examples) -> bool:
    """Whether ``model`` ranks each (user, day)'s purchase above all of its negatives."""
    scored = examples.assign(p=model.predict_proba(examples[model.feature_names].to_numpy(dtype=float)))
    best_negative = scored[scored.label == 0].groupby(["user_id", "day"]).p.max()
    bought = scored[scored.label == 1].set_index(["user_id", "day"]).p
    return bool((bought > best_negative.reindex(bought.index)).all())


def test_tuning_chooses_the_grid_point_that_ranks_best():
    """Strong regularisation (C=0.01) weighs two nearly equal scores alike and ranks by their
    level; C=1 weighs them + and - and ranks every purchase first in its list, with either
    ratio. So the choice is C=1 by the validation metric (NDCG or AUC alike: both are perfect
    for C=1 only), and ratio 2 by the rule's tie-break (the smaller ratio)."""
    data = twin_scores()
    earlier, validation = data[data.day < dt.date(2025, 1, 3)], data[data.day >= dt.date(2025, 1, 3)]
    for ratio in (2, 10):  # what the data was built for, seen without train_metamodel
        sample = subsample_negatives(earlier, ratio)
        assert np.log1p(sample[sample.label == 1].that).mean() == pytest.approx(
            np.log1p(sample[sample.label == 0].that).mean())
        assert first_in_every_list(MetaModel(["this", "that"], 1.0).fit(sample), validation)
        assert not first_in_every_list(MetaModel(["this", "that"], 0.01).fit(sample), validation)
    model, metrics, report = train_metamodel(data, ["this", "that"], (), C=(0.01, 1.0),
                                             negative_ratios=(2, 10), validation_days=2)
    assert (metrics["chosen_C"], metrics["chosen_negative_ratio"]) == (1.0, 2.0)
    assert model.C == 1.0 and first_in_every_list(model, validation)
    assert metrics["validation_auc"] == 1.0
