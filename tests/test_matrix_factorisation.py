"""ALS and BPR find planted taste groups, fold new users in, and are reproducible."""
import datetime as dt

import numpy as np
import pytest

from salerank.features.history import Catalog, ScoringContext
from salerank.features.loading import Tables
from salerank.recommenders import ALS, BPR, UserHistory

AS_OF = dt.date(2025, 2, 1)


@pytest.fixture(scope="module")
def context(spark):
    """40 users in two groups; group A visits only sales s0-s4, group B only s5-s9."""
    rng = np.random.default_rng(3)
    sales = spark.createDataFrame(
        [(f"s{i}", dt.date(2025, 1, 1), dt.date(2025, 3, 1)) for i in range(10)],
        "sale_id string, open_date date, close_date date")
    visits = []
    for u in range(40):
        group = range(0, 5) if u < 20 else range(5, 10)
        for s in rng.choice(list(group), 3, replace=False):
            visits.append((f"u{u:02d}", f"s{s}", dt.datetime(2025, 1, 1 + int(rng.integers(0, 30)))))
    visits = spark.createDataFrame(visits, "user_id string, sale_id string, ts timestamp")
    purchases = spark.createDataFrame([], "user_id string, sale_id string, ts timestamp")
    users = spark.createDataFrame([(f"u{u:02d}",) for u in range(40)], "user_id string")
    images = spark.createDataFrame([], "sale_id string, image_path string")
    tables = Tables(sales, images, users, visits, purchases, None)
    return ScoringContext.build(tables, Catalog.from_tables(spark, tables), AS_OF)


def history(items, user_id="new"):
    return UserHistory.from_lists([np.array(items)], [np.zeros(len(items), bool)], 10,
                                  user_ids=np.array([user_id]))


@pytest.mark.parametrize("model", [ALS(factors=2, iterations=20), BPR(factors=2, iterations=200)])
def test_matrix_factorisation_ranks_the_users_own_group_first(context, model):
    fitted = model.fit(context)
    # a group-A user: every unseen A sale scores above every B sale
    u = context.events.filter("user_id = 'u00'").toPandas()["sale_idx"].tolist()
    scores = fitted.score(history(u, "u00"))[0]
    unseen_a = [i for i in range(5) if i not in u]
    assert scores[unseen_a].min() > scores[5:].max()


def test_als_folds_in_a_user_it_never_saw(context):
    fitted = ALS(factors=2, iterations=20).fit(context)
    scores = fitted.score(history([5, 6]))[0]
    assert scores[[7, 8, 9]].min() > scores[:5].max()
    # what is broadcast to the workers holds no per-user state: it does not grow with users
    assert fitted.model_.user_factors.shape == (0, 2) and not hasattr(fitted, "user_index_")


def test_bpr_scores_unknown_users_zero(context):
    assert not BPR(factors=4).fit(context).score(history([5, 6], "stranger")).any()


@pytest.mark.parametrize("model", [ALS, BPR])
def test_same_seed_same_scores(context, model):
    block = UserHistory.from_lists([np.array([0, 1]), np.array([7])], [np.zeros(2, bool), np.zeros(1, bool)],
                                   10, user_ids=np.array(["u01", "u30"]))
    first = model(factors=4, seed=7).fit(context).score(block)
    np.testing.assert_array_equal(first, model(factors=4, seed=7).fit(context).score(block))
    assert not np.array_equal(first, model(factors=4, seed=8).fit(context).score(block))
