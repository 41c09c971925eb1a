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
    from salerank.jobs.replay import truth_window

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


def test_sale_versions_are_read_as_of_each_day(spark):
    """s1 is announced to close on the 12th at 100; on the 10th it is extended to the 20th and
    repriced to 80. As of the 8th, days_left and the price are the announced ones (the snapshot,
    which shows the extension, would leak it); as of the 15th the new ones. Without versions the
    snapshot holds all along."""
    import numpy as np

    from salerank.features.history import Catalog, ScoringContext
    from salerank.features.loading import Tables
    from salerank.metamodel.signals import DaysLeft

    sales = spark.createDataFrame([("s1", "Sale 1", dt.date(2025, 1, 1), dt.date(2025, 1, 20), 80.0),
                                   ("s2", "Sale 2", dt.date(2025, 1, 1), dt.date(2025, 1, 30), 50.0)],
                                  "sale_id string, title string, open_date date, close_date date, price double")
    versions = spark.createDataFrame(
        [("s1", dt.datetime(2024, 12, 20), dt.date(2025, 1, 12), 100.0),
         ("s1", dt.datetime(2025, 1, 10, 15), dt.date(2025, 1, 20), 80.0)],
        "sale_id string, valid_from timestamp, close_date date, price double")
    events = spark.createDataFrame([("u1", "s1", dt.datetime(2025, 1, 2))], "user_id string, sale_id string, ts timestamp")
    users = spark.createDataFrame([("u1",)], "user_id string")
    empty = spark.createDataFrame([], "sale_id string, image_path string")

    def known(day, with_versions=True):
        tables = Tables(sales, empty, users, events, events.limit(0), None,
                        sale_versions=versions if with_versions else None)
        context = ScoringContext.build(tables, Catalog.from_tables(spark, tables), day)
        terms = context.catalog.sales.set_index("sale_id")
        return DaysLeft().fit(context).values_.tolist(), terms.loc["s1", "price"], len(context.open_idx)

    assert known(dt.date(2025, 1, 8)) == ([4.0, 22.0], 100.0, 2)
    assert known(dt.date(2025, 1, 10)) == ([2.0, 20.0], 100.0, 2)  # changed during the 10th: known on the 11th
    assert known(dt.date(2025, 1, 15)) == ([5.0, 15.0], 80.0, 2)
    assert known(dt.date(2025, 1, 8), with_versions=False) == ([12.0, 22.0], 80.0, 2)


def test_a_version_of_an_unknown_sale_is_an_error(spark, tmp_path, world, world_dir):
    import shutil

    import pytest

    from salerank.features.loading import DataValidationError, load_tables

    data = tmp_path / "data"
    shutil.copytree(world_dir / "data", data)
    (data / "sale_versions.csv").write_text("sale_id,valid_from,close_date,price\n"
                                            f"{world.sales.sale_id.iloc[0]},2025-03-01 10:00:00,2025-03-09,\n"
                                            "nope,2025-03-01 10:00:00,2025-03-09,12.5\n")
    with pytest.raises(DataValidationError) as caught:
        load_tables(spark, str(data))
    assert "sale_versions.csv" in str(caught.value) and "names a sale that is not in sales" in str(caught.value)
