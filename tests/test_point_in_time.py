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
