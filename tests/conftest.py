"""Shared fixtures: one local SparkSession for the whole suite, and a small generated world."""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from salerank.conf import load_config
from salerank.world import WorldConfig, generate_world

SMALL_WORLD = WorldConfig(n_users=400, n_days=30, sales_per_day=5)
# the A/B test of the suite's night: popularity against the meta-model, 1:3
EXPERIMENT = {"name": "meta-vs-pop", "salt": "test", "start": "2025-01-01", "end": "2030-12-31",
              "variants": [{"name": "control", "strategy": "popularity", "weight": 1},
                           {"name": "treatment", "strategy": "metamodel", "weight": 3}]}


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


@pytest.fixture(scope="session")
def night_config(config):
    return {**config, "experiments": [EXPERIMENT]}


@pytest.fixture(scope="session")
def trained(spark, world, world_dir, config, tmp_path_factory):
    """The suite's one training on the small world: a meta-model registered with the alias the
    nightly run uses, in OUT's MLflow store; (its result, OUT). Tests that publish a night of
    their own do it in another OUT, pointing ``mlflow.tracking_uri`` at this store."""
    from salerank.jobs.pipeline import run_training

    out = tmp_path_factory.mktemp("night")
    result = run_training(spark, str(world_dir / "data"), world.last_date, str(out), config, alias="champion")
    return result, out


@pytest.fixture(scope="session")
def night(spark, world, world_dir, night_config, trained):
    """The suite's night of the world's last date, published to the trained OUT: (result, OUT)."""
    from salerank.jobs.pipeline import run_nightly

    _, out = trained
    result = run_nightly(spark, str(world_dir / "data"), world.last_date, str(out), night_config,
                         keep_rankings=True)
    return result, out


def with_store(settings: dict, out) -> dict:
    """``settings`` with the MLflow store of ``out`` (the trained one), for a night published elsewhere."""
    return {**settings, "mlflow": {**settings["mlflow"], "tracking_uri": f"sqlite:///{out / 'mlflow.db'}"}}


@pytest.fixture(scope="session")
def hand_context(spark):
    """Four sales and four users whose scores can be worked out by hand; the day is
    2025-01-05 and the events on and after it must never count."""
    from salerank.features.history import Catalog, ScoringContext
    from salerank.features.loading import Tables

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
    return ScoringContext.build(tables, Catalog.from_tables(spark, tables), dt.date(2025, 1, 5))


def day(world, offset_from_end: int = 0) -> dt.date:
    return world.last_date - dt.timedelta(days=offset_from_end)


class Processes:
    """Servers and jobs a test starts, each in its own process group (a Spark daemon's JVM,
    a driver's Python and JVM, an MLflow server's workers), so that all of it can be stopped."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    @staticmethod
    def free_port() -> int:
        """A TCP port on 127.0.0.1 that nothing listens on now."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    @staticmethod
    def tail(log: Path, lines: int = 40) -> str:
        """The last lines of a log, for an assertion's message."""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def start(self, command: list[str], log: Path, cwd: Path, env: dict | None = None) -> subprocess.Popen:
        """Run ``command`` in the background, its output (and errors) to ``log``."""
        with open(log, "wb") as out:
            job = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append(job)
        return job

    def finish(self, job: subprocess.Popen, log: Path, timeout: float = 900) -> None:
        """Wait for ``job``; fail with the end of its log unless it exits with 0 in time."""
        try:
            code = job.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(job, signal.SIGKILL)
            raise AssertionError(f"{log.name} still running after {timeout} s:\n{self.tail(log)}") from None
        assert code == 0, f"{log.name} exited with {code}:\n{self.tail(log)}"

    def stop_all(self) -> None:
        """Stop every group started (the last first), with SIGKILL after 20 s."""
        for job in reversed(self.started):
            self._signal(job, signal.SIGTERM)
        for job in reversed(self.started):
            try:
                job.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)
                job.wait()

    @staticmethod
    def _signal(job: subprocess.Popen, sig: int) -> None:
        try:  # the group, even when its leader has ended and left children behind
            os.killpg(job.pid, sig)
        except ProcessLookupError:
            pass


@pytest.fixture
def processes():
    """Start background processes with ``processes.start``; every one of them (its whole
    process group) is stopped when the test ends, also when it fails."""
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()
