"""Shared fixtures: one local SparkSession for the whole suite, and a small generated world."""
from __future__ import annotations

import datetime as dt

import pytest

from salerank.conf import load_config
from salerank.world import WorldConfig, generate_world

SMALL_WORLD = WorldConfig(n_users=400, n_days=30, sales_per_day=5)


@pytest.fixture(scope="session")
def config():
    """Defaults, with what makes a small world fast: few partitions, a short training window."""
    return load_config(overrides={
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "scoring_partitions": 2},
        "metamodel": {"train_days": 6},
    })


@pytest.fixture(scope="session")
def spark(config):
    from salerank.jobs.spark import get_spark

    session = get_spark(config)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def world():
    return generate_world(SMALL_WORLD, seed=7)


@pytest.fixture(scope="session")
def world_dir(world, tmp_path_factory):
    """The small world written in the data contract (``data/``) and its truth (``truth/``)."""
    out = tmp_path_factory.mktemp("world")
    world.write(out)
    return out


@pytest.fixture(scope="session")
def tables(spark, world_dir):
    from salerank.features.loading import load_tables

    return load_tables(spark, world_dir / "data")


@pytest.fixture(scope="session")
def catalog(spark, tables):
    from salerank.features.history import Catalog

    return Catalog.from_tables(spark, tables)


def day(world, offset_from_end: int = 0) -> dt.date:
    return world.last_date - dt.timedelta(days=offset_from_end)
