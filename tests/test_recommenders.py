"""Each recommender on a hand-made history whose scores can be worked out by hand."""
import datetime as dt

import numpy as np
import pytest

from salerank.features.history import Catalog, ScoringContext
from salerank.features.loading import Tables
from salerank.recommenders import ContentBased, ItemCF, Popularity, UserHistory

AS_OF = dt.date(2025, 1, 5)


@pytest.fixture(scope="module")
def context(spark):
    def ts(day):
        return dt.datetime(2025, 1, day, 12)

    sales = spark.createDataFrame(
        [(f"s{i}", f"Sale {i}", dt.date(2025, 1, 1), dt.date(2025, 1, 10), dest, cat, price)
         for i, dest, cat, price in [(1, "A", "hotel", 100.0), (2, "A", "villa", 200.0),
                                     (3, "B", "hotel", 300.0), (4, "B", "villa", 400.0)]],
        "sale_id string, title string, open_date date, close_date date, destination string, "
        "category string, price double")
    visits = spark.createDataFrame(
        [("u1", "s1", ts(1)), ("u1", "s2", ts(2)), ("u2", "s1", ts(1)), ("u2", "s2", ts(2)),
         ("u2", "s3", ts(3)), ("u3", "s3", ts(4)),
         ("u4", "s4", ts(5)), ("u1", "s4", ts(6))],  # on and after the day: must not count
        "user_id string, sale_id string, ts timestamp")
    purchases = spark.createDataFrame([("u2", "s2", ts(3)), ("u3", "s4", ts(7))],
                                      "user_id string, sale_id string, ts timestamp")
    users = spark.createDataFrame([(f"u{i}",) for i in range(1, 5)], "user_id string")
    empty = spark.createDataFrame([], "sale_id string, image_path string")
    tables = Tables(sales, empty, users, visits, purchases, None)
    return ScoringContext.build(tables, Catalog.from_tables(spark, tables), AS_OF)


def history(items, bought=()):
    """One user's history over the catalogue s1..s4 (indices 0..3)."""
    return UserHistory.from_lists([np.array(items)], [np.isin(items, bought)], 4)


def test_only_events_before_the_day_are_seen(context):
    assert sorted(context.events.select("user_id").distinct().toPandas()["user_id"]) == ["u1", "u2", "u3"]
    assert sorted(context.active_users(30).toPandas()["user_id"]) == ["u1", "u2", "u3"]
    assert sorted(context.active_users(1).toPandas()["user_id"]) == ["u3"]


def test_popularity_counts_distinct_recent_users(context):
    model = Popularity(window_days=7).fit(context)
    np.testing.assert_array_equal(model.scores_, [2, 2, 2, 0])
    # [Jan 3, Jan 5): u2 bought s2 and visited s3, u3 visited s3
    assert Popularity(window_days=2).fit(context).scores_.tolist() == [0, 1, 2, 0]


def test_item_cf_sums_cosine_similarities(context):
    model = ItemCF().fit(context)
    # users per sale before the day: s1 {u1,u2}, s2 {u1,u2}, s3 {u2,u3}, s4 {}
    expected = np.array([[0, 1, .5, 0], [1, 0, .5, 0], [.5, .5, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(model.similarity_.toarray(), expected)
    np.testing.assert_allclose(model.score(history([0, 1])), [[1, 1, 1, 0]])
    np.testing.assert_allclose(model.score(history([2])), [[.5, .5, 0, 0]])


def test_item_cf_neighbourhood_keeps_the_most_similar(context):
    model = ItemCF(neighbours=1).fit(context)
    assert (model.similarity_.toarray() > 0).sum(axis=0).tolist() == [1, 1, 1, 0]


def test_content_profile_shares(context):
    model = ContentBased(price_bands=2, visit_weight=1.0, purchase_weight=3.0).fit(context)
    # a user who visited s3 (B, hotel, expensive band) matches s4 on destination and band
    np.testing.assert_allclose(model.score(history([2])), [[1, 0, 3, 2]])
    # visited s1 (weight 1) and bought s2 (weight 1 + 3): destination A 5/5, hotel 1/5,
    # villa 4/5, cheap band 5/5
    np.testing.assert_allclose(model.score(history([0, 1], bought=[1])), [[2.2, 2.8, .2, .8]])
    np.testing.assert_allclose(model.score(history([])), [[0, 0, 0, 0]])
