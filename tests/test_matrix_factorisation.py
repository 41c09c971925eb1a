"""ALS and BPR find planted taste groups, fold new users in, and are reproducible."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

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


def history(model, items, user_id="new"):
    """One user's history, with ``model``'s per-user state for ``user_id`` joined to it as
    scoring does (zeros if the model has none for this user)."""
    return block(model, [items], [user_id])


def block(model, item_lists, user_ids):
    states = {}
    if (state := model.user_state()) is not None:
        ids, rows = state
        found = {u: rows[i] for i, u in enumerate(ids)}
        states[model.name] = np.stack([found.get(u, np.zeros(rows.shape[1], np.float32)) for u in user_ids])
    return UserHistory.from_lists([np.array(x) for x in item_lists],
                                  [np.zeros(len(x), bool) for x in item_lists], 10, states=states)


@pytest.mark.parametrize("model", [ALS(factors=2, iterations=20), BPR(factors=2, iterations=200)])
def test_matrix_factorisation_ranks_the_users_own_group_first(context, model):
    fitted = model.fit(context)
    # a group-A user: every unseen A sale scores above every B sale
    u = context.events.filter("user_id = 'u00'").toPandas()["sale_idx"].tolist()
    scores = fitted.score(history(fitted, u, "u00"))[0]
    unseen_a = [i for i in range(5) if i not in u]
    assert scores[unseen_a].min() > scores[5:].max()


def test_als_folds_in_a_user_it_never_saw(context):
    fitted = ALS(factors=2, iterations=20).fit(context)
    scores = fitted.score(history(fitted, [5, 6]))[0]
    assert scores[[7, 8, 9]].min() > scores[:5].max()
    # what is broadcast to the workers holds no per-user state: it does not grow with users
    assert fitted.model_.user_factors.shape == (0, 2) and fitted.user_state() is None


def test_bpr_scores_unknown_users_zero(context):
    fitted = BPR(factors=4).fit(context)
    assert not fitted.score(history(fitted, [5, 6], "stranger")).any()


def test_bpr_user_factors_are_joined_to_the_users_not_broadcast(context):
    """Scoring through Spark joins each user's BPR factors to their history: the same
    scores as the factors themselves, zeros for a stranger; the pickled (broadcast)
    model holds no per-user state."""
    import pickle

    from salerank.metamodel.ranking import RANKING_SCHEMA, RankTopK
    from salerank.recommenders.scoring import score_users

    fitted = BPR(factors=4).fit(context)
    ids, factors = fitted.user_state()
    assert len(ids) == 40 and factors.shape == (40, 5)  # 4 factors and the item bias
    assert not hasattr(pickle.loads(pickle.dumps(fitted)), "user_factors_")
    users = context.events.sparkSession.createDataFrame([("u03",), ("u27",), ("stranger",)], "user_id string")
    ranked = score_users(context, [fitted], users, RankTopK(None, 3, ("bpr",)), RANKING_SCHEMA, 2).toPandas()
    items = np.asarray(fitted.model_.item_factors)[context.open_idx]
    for user in ("u03", "u27"):
        expected = factors[list(ids).index(user)] @ items.T
        got = ranked[ranked.user_id == user].sort_values("rank")
        np.testing.assert_allclose(got["score"], np.sort(expected)[::-1][:3], rtol=1e-6)
    assert (ranked[ranked.user_id == "stranger"]["score"] == 0).all()


@pytest.mark.parametrize("model", [ALS, BPR])
def test_same_seed_same_scores(context, model):
    def scores(seed):
        fitted = model(factors=4, seed=seed).fit(context)
        return fitted.score(block(fitted, [[0, 1], [7]], ["u01", "u30"]))

    first = scores(7)
    np.testing.assert_array_equal(first, scores(7))
    assert not np.array_equal(first, scores(8))


def test_als_factors_do_not_depend_on_the_number_of_threads(context):
    one, two = ALS(factors=4, threads=1).fit(context), ALS(factors=4, threads=2).fit(context)
    np.testing.assert_array_equal(np.asarray(one.model_.item_factors), np.asarray(two.model_.item_factors))


def _varied_activity_context(spark, partitions: int) -> ScoringContext:
    """200 users touching 1 to 16 of 20 sales (user u touches 1 + u % 16): activity strata (the
    floor of log2) of 13, 26, 52, 97 and 12 users."""
    sales = spark.createDataFrame([(f"s{i:02d}", dt.date(2025, 1, 1), dt.date(2025, 3, 1)) for i in range(20)],
                                  "sale_id string, open_date date, close_date date")
    visits = [(f"u{u:03d}", f"s{(u + k) % 20:02d}", dt.datetime(2025, 1, 2 + k))
              for u in range(200) for k in range(1 + u % 16)]
    visits = spark.createDataFrame(visits, "user_id string, sale_id string, ts timestamp").repartition(partitions)
    empty = spark.createDataFrame([], "user_id string, sale_id string, ts timestamp")
    users = spark.createDataFrame([(f"u{u:03d}",) for u in range(200)], "user_id string")
    images = spark.createDataFrame([], "sale_id string, image_path string")
    tables = Tables(sales, images, users, visits, empty, None)
    return ScoringContext.build(tables, Catalog.from_tables(spark, tables), AS_OF)


def test_the_fit_sample_is_bounded_keeps_each_activity_stratum_share_and_whole_histories(spark):
    context = _varied_activity_context(spark, 1)
    everyone = context.collect_interactions(["user_id", "sale_idx"]).to_pandas()
    touched = everyone.groupby("user_id").size()
    strata = np.floor(np.log2(touched)).astype(int)
    sample = context.collect_interactions(["user_id", "sale_idx"], max_users=50, seed=1).to_pandas()
    chosen = sample.groupby("user_id").size()
    # each stratum keeps its share of the 50 (3.25, 6.5, 13, 24.25 and 3 users), rounded by
    # largest remainder to 50 in all, and each of them with every sale they touched
    expected = pd.Series({0: 3, 1: 7, 2: 13, 3: 24, 4: 3})
    pd.testing.assert_series_equal(strata[chosen.index].value_counts().sort_index(), expected, check_names=False)
    pd.testing.assert_series_equal(chosen, touched[chosen.index])
    # within each stratum, the first users by the seeded hash of user_id
    hashed = spark.createDataFrame([(u,) for u in touched.index], "user_id string").select(
        "user_id", (F.pmod(F.xxhash64("user_id", F.lit(1)), F.lit(1 << 53)) / float(1 << 53)).alias("draw"))
    draws = hashed.toPandas().set_index("user_id")["draw"].sort_values(kind="stable")
    first = [u for s, n in expected.items() for u in draws[strata[draws.index] == s].index[:n]]
    assert set(first) == set(chosen.index)
    # seeded, and the same whatever the partitioning of the events
    again = _varied_activity_context(spark, 7).collect_interactions(["user_id", "sale_idx"], max_users=50, seed=1)
    assert set(again.to_pandas().user_id) == set(chosen.index)
    other = context.collect_interactions(["user_id", "sale_idx"], max_users=50, seed=2).to_pandas()
    assert set(other.user_id) != set(chosen.index)
    # no cap that binds: everyone
    assert len(context.collect_interactions(["user_id"], max_users=200, seed=1)) == len(everyone)


def test_als_fitted_on_a_sample_of_users_still_folds_everyone_in(context):
    capped = ALS(factors=2, iterations=20, max_users=20).fit(context)
    fitted_on = set(context.collect_interactions(["user_id"], max_users=20, seed=capped.seed)["user_id"].to_pylist())
    assert len(fitted_on) == 20
    seen = context.events.toPandas().groupby("user_id")["sale_idx"].apply(list)
    for user, items in seen.items():  # the 20 outside the fit too: each ranks its own group first
        same, other = (range(5), range(5, 10)) if user < "u20" else (range(5, 10), range(5))
        scores = capped.score(history(capped, items, user))[0]
        assert scores[[i for i in same if i not in items]].min() > scores[list(other)].max(), user
    # the cap reached the fit: other factors than from everyone
    assert not np.allclose(np.asarray(capped.model_.item_factors), np.asarray(ALS(factors=2, iterations=20)
                                                                               .fit(context).model_.item_factors))
    # a cap that does not bind fits exactly what no cap fits
    np.testing.assert_array_equal(np.asarray(ALS(factors=2, max_users=40).fit(context).model_.item_factors),
                                  np.asarray(ALS(factors=2).fit(context).model_.item_factors))
