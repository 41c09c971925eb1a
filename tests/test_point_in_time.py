"""Point-in-time correctness: events on or after a day never reach that day's features."""
import dataclasses
import datetime as dt

import pandas as pd
from pyspark.sql import functions as F

from salerank.metamodel.training import day_examples
from salerank.recommenders import from_config


def _plant(spark, tables, catalog, users, when: dt.date):
    """Every given user visits every sale open on ``when`` at noon, and buys them a day later."""
    open_ids = catalog.sale_ids(catalog.open_on(when))
    noon = dt.datetime.combine(when, dt.time(12))
    visits = spark.createDataFrame([(u, s, noon) for u in users for s in open_ids],
                                   "user_id string, sale_id string, ts timestamp")
    purchases = visits.withColumn("ts", F.col("ts") + F.expr("INTERVAL 1 DAY"))
    if "amount" in tables.purchases.columns:
        purchases = purchases.withColumn("amount", F.lit(None).cast("double"))
    return dataclasses.replace(tables, visits=tables.visits.unionByName(visits),
                               purchases=tables.purchases.unionByName(purchases))


def test_a_planted_future_event_cannot_change_a_past_example(spark, tables, catalog, world, config):
    d = world.last_date - dt.timedelta(days=3)
    recommenders = from_config(config)
    examples = lambda t: day_examples(t, catalog, recommenders, d, 5, 42, 2).reset_index(drop=True)  # noqa: E731
    before = examples(tables)
    users = sorted(before["user_id"].unique())[:5]
    assert len(before) and len(users) == 5
    # on the day itself (visits) and after it (purchases): the examples must not move
    pd.testing.assert_frame_equal(examples(_plant(spark, tables, catalog, users, d)), before)
    # control: the same events a day earlier are history, and they do change the features
    earlier = examples(_plant(spark, tables, catalog, users, d - dt.timedelta(days=2)))
    assert not earlier.drop(columns=["label"]).equals(before.drop(columns=["label"]))


def test_a_repurchase_is_never_a_label_because_no_night_can_recommend_it(spark):
    """u1 buys s1 on the 2nd and again on the 4th; u2 buys s1 for the first time on the 4th.
    A night of the 4th masks s1 for u1 (already bought), so u1's second purchase is neither
    a training positive, nor calibration purchase, nor evaluation truth; u2's is all three."""
    from salerank.features.history import Catalog, purchases_on
    from salerank.features.loading import Tables
    from salerank.jobs.backtesting import truth_window

    sales = spark.createDataFrame([("s1", "Sale 1", dt.date(2025, 1, 1), dt.date(2025, 1, 10), 100.0)],
                                  "sale_id string, title string, open_date date, close_date date, price double")
    purchases = spark.createDataFrame(
        [("u1", "s1", dt.datetime(2025, 1, 2, 9)), ("u1", "s1", dt.datetime(2025, 1, 4, 9)),
         ("u2", "s1", dt.datetime(2025, 1, 4, 10))], "user_id string, sale_id string, ts timestamp")
    users = spark.createDataFrame([("u1",), ("u2",)], "user_id string")
    empty = spark.createDataFrame([], "sale_id string, image_path string")
    tables = Tables(sales, empty, users, purchases.limit(0), purchases, None)
    catalog = Catalog.from_tables(spark, tables)
    day = dt.date(2025, 1, 4)
    assert [(r.user_id, r.sale_id) for r in purchases_on(tables, catalog, day).collect()] == [("u2", "s1")]
    assert truth_window(tables, catalog, day, 2)[["user_id", "sale_id"]].values.tolist() == [["u2", "s1"]]
    # on the 2nd, u1's first purchase is a label like any other
    assert [r.user_id for r in purchases_on(tables, catalog, dt.date(2025, 1, 2)).collect()] == ["u1"]
