"""Point-in-time views of the data: what was known at the start of a day.

:class:`ScoringContext` is the one mechanism through which training, evaluation and the
nightly run see events: ``ScoringContext.build(..., as_of=d)`` keeps only events strictly
before ``d``, so nothing from day ``d`` or later can reach a feature computed for ``d``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .loading import Tables

AUDIENCE_WINDOWS = (1, 7, 30)  # days of the open sales' audience counts (ScoringContext.open_sale_audience)


VERSIONED = ("open_date", "close_date", "price")  # the terms ``sale_versions`` may change


@dataclass(frozen=True)
class Catalog:
    """Every sale, indexed ``0..n-1`` in ``sale_id`` order (small: collected to the driver).

    ``sales`` is the latest snapshot. A sale's terms may change after it is announced (an
    extension, an early close, a new price): with the optional ``sale_versions`` table,
    :meth:`as_of` gives the terms known at the start of a day, and every point-in-time view
    (:class:`ScoringContext`) uses it. Without that table the snapshot is assumed to have
    held all along. The other metadata is known before a sale opens.
    """

    sales: pd.DataFrame  # sale_id, open_date, close_date, [destination, category, price], idx
    index: DataFrame  # Spark: sale_id -> sale_idx, for joining events
    themes: np.ndarray | None = None  # sales x image themes, rows in idx order
    versions: pd.DataFrame | None = None  # sale_id, valid_from, [open_date, close_date, price]
    attributes: pd.DataFrame | None = None  # sales x attributes predicted from the photos, idx order
    embeddings: np.ndarray | None = None  # sales x 1280, unit length (0 without photos), idx order

    def with_themes(self, sale_themes: pd.DataFrame, sale_attributes: pd.DataFrame | None = None,
                    sale_embeddings: pd.DataFrame | None = None) -> Catalog:
        """This catalogue with each sale's image-theme weights (0 for sales without photos),
        given a tagger of catalogue attributes the values predicted from its photos (None
        for sales without photos), and given them the photos' embeddings (0 without photos)."""
        aligned = sale_themes.reindex(self.sales["sale_id"]).fillna(0.0).to_numpy()
        attributes = None
        if sale_attributes is not None and len(sale_attributes.columns):
            attributes = sale_attributes.reindex(self.sales["sale_id"]).astype(object)
            attributes = attributes.where(attributes.notna(), None).reset_index(drop=True)
        embeddings = None
        if sale_embeddings is not None and len(sale_embeddings.columns):
            embeddings = sale_embeddings.reindex(self.sales["sale_id"]).fillna(0.0).to_numpy(np.float32)
        return dataclasses.replace(self, themes=aligned, attributes=attributes, embeddings=embeddings)

    def as_of(self, day: dt.date) -> Catalog:
        """The catalogue as known at the start of ``day``: each versioned sale with the terms
        of its last version from before ``day`` (its first version if it has none yet: the
        snapshot would show a later change); a version's empty value keeps the snapshot's."""
        if self.versions is None or not len(self.versions):
            return self
        start = pd.Timestamp(day)
        known = self.versions[self.versions["valid_from"] < start].groupby("sale_id").tail(1)
        first = self.versions.groupby("sale_id").head(1)
        current = pd.concat([known, first[~first["sale_id"].isin(known["sale_id"])]]).set_index("sale_id")
        sales = self.sales.copy()
        rows = sales["sale_id"].map(pd.Series(np.arange(len(current)), index=current.index))
        has = rows.notna().to_numpy()
        for column in (c for c in VERSIONED if c in current.columns and c in sales.columns):
            values = current[column].to_numpy()[rows[has].astype(int).to_numpy()]
            given = pd.notna(values)
            target = np.flatnonzero(has)[given]
            sales.loc[target, column] = values[given]
        return dataclasses.replace(self, sales=sales, versions=None)

    @classmethod
    def from_tables(cls, spark: SparkSession, tables: Tables) -> Catalog:
        columns = [c for c in ("sale_id", "title", "open_date", "close_date", "destination",
                               "category", "price") if c in tables.sales.columns]
        sales = tables.sales.select(*columns).toPandas().sort_values("sale_id", kind="stable")
        sales = sales.reset_index(drop=True)
        sales["idx"] = np.arange(len(sales), dtype=np.int32)
        index = spark.createDataFrame(sales[["sale_id", "idx"]].rename(columns={"idx": "sale_idx"}))
        versions = None
        if getattr(tables, "sale_versions", None) is not None:
            versions = (tables.sale_versions.toPandas()
                        .sort_values(["sale_id", "valid_from"], kind="stable").reset_index(drop=True))
        return cls(sales, F.broadcast(index), versions=versions)

    def __len__(self) -> int:
        return len(self.sales)

    def open_on(self, day: dt.date) -> np.ndarray:
        """Indices of the sales open on ``day`` (open_date <= day <= close_date)."""
        mask = (self.sales["open_date"] <= day) & (self.sales["close_date"] >= day)
        return self.sales["idx"].to_numpy()[mask.to_numpy()]

    def sale_ids(self, idx: np.ndarray) -> np.ndarray:
        return self.sales["sale_id"].to_numpy()[idx]


def _literal_map(table: dict):
    """A Spark map column of ``table``'s keys and values."""
    return F.create_map(*[F.lit(x) for pair in table.items() for x in pair])


def _largest_remainder(sizes: dict, total_quota: int) -> dict:
    """Each key's share of ``total_quota`` in proportion to its size, whole numbers adding up
    to ``total_quota`` (the largest remainders rounded up; ties to the lower key)."""
    total = sum(sizes.values())
    exact = {k: size * total_quota / total for k, size in sizes.items()}
    quotas = {k: int(v) for k, v in exact.items()}
    left = total_quota - sum(quotas.values())
    for k in sorted(exact, key=lambda k: (quotas[k] - exact[k], k))[:left]:
        quotas[k] += 1
    return quotas


def _first_by_draw(candidates: pa.Table, quotas: dict):
    """A filter keeping each stratum's first ``quotas[stratum]`` users by (``draw``,
    ``user_id``), from the ``candidates`` (``stratum, draw, user_id``) that hold them: the
    last one's draw and id per stratum, as literals."""
    ordered = candidates.sort_by([("stratum", "ascending"), ("draw", "ascending"), ("user_id", "ascending")])
    strata = ordered["stratum"].to_numpy()
    last_draw, last_user = {}, {}
    for stratum, quota in quotas.items():
        inside = np.flatnonzero(strata == stratum)
        if quota and len(inside):
            last = inside[min(quota, len(inside)) - 1]
            last_draw[stratum], last_user[stratum] = ordered["draw"][last].as_py(), ordered["user_id"][last].as_py()
    if not last_draw:
        return F.lit(False)
    draw, stratum = F.col("draw"), F.col("stratum")
    bar = _literal_map(last_draw)[stratum]
    return (draw < bar) | ((draw == bar) & (F.col("user_id") <= _literal_map(last_user)[stratum]))


@dataclass
class ScoringContext:
    """What is known at the start of ``as_of``: the catalogue, the sales open that day and
    every visit and purchase strictly before it."""

    as_of: dt.date
    catalog: Catalog
    open_idx: np.ndarray
    events: DataFrame  # user_id, sale_idx, ts, bought (visits and purchases before as_of)

    @classmethod
    def build(cls, tables: Tables, catalog: Catalog, as_of: dt.date) -> ScoringContext:
        start = F.lit(as_of).cast("timestamp")
        visits = tables.visits.select("user_id", "sale_id", "ts", F.lit(False).alias("bought"))
        purchases = tables.purchases.select("user_id", "sale_id", "ts", F.lit(True).alias("bought"))
        events = (visits.unionByName(purchases).filter(F.col("ts") < start)
                  .join(catalog.index, "sale_id").drop("sale_id"))
        known = catalog.as_of(as_of)  # the sales' terms as known that morning
        return cls(as_of, known, known.open_on(as_of), events)

    def interactions(self, partitions: int | None = None) -> DataFrame:
        """One row per (user, sale) the user visited or bought: ``bought``, ``last_ts``;
        with ``partitions``, hash-partitioned by ``user_id`` into that many."""
        events = self.events if partitions is None else self.events.repartition(partitions, "user_id")
        return events.groupBy("user_id", "sale_idx").agg(
            F.max(F.col("bought").cast("int")).cast("boolean").alias("bought"),
            F.max("ts").alias("last_ts"),
            F.sum((~F.col("bought")).cast("int")).alias("visits"),
            F.max(F.when(~F.col("bought"), F.col("ts"))).alias("last_visit_ts"))

    def collect_interactions(self, columns: list[str], max_users: int | None = None, seed: int = 0) -> pa.Table:
        """``columns`` of :meth:`interactions` as Arrow on the driver (no Python object per
        row), of at most ``max_users`` users (None: all), with their whole histories.

        The sample is stratified by activity (``floor(log2(sales the user touched))``): each
        stratum's quota is its share of ``max_users``, rounded by largest remainder so the
        quotas add up to ``max_users``; within a stratum the users first by a seeded hash of
        ``user_id`` (ties by ``user_id``), so the sample does not depend on the partitioning.
        The events are shuffled once, into one cached row per user: the strata's sizes, a
        seeded candidate draw a little larger than each quota (a hash below the quota's share
        plus a margin; only these reach the driver, to find each stratum's last user) and the
        sample are all read from it."""
        if max_users is None:
            return self.interactions().select(*columns).toArrow()
        per_user = self._interactions_per_user([c for c in dict.fromkeys(["sale_idx", *columns]) if c != "user_id"],
                                               seed).cache()
        try:
            sizes = {r["stratum"]: r["count"] for r in per_user.groupBy("stratum").count().collect()}
            chosen = per_user
            if sum(sizes.values()) > max_users:
                quotas = _largest_remainder(sizes, max_users)
                # a Bernoulli draw of about quota + 4 standard deviations + 10 per stratum holds
                # the quota's first users by draw unless ~1e-5 unlucky: then fewer are kept
                cut = {s: min(1.0, (q + 4 * q ** 0.5 + 10) / sizes[s]) for s, q in quotas.items()}
                candidates = (per_user.filter(F.col("draw") < _literal_map(cut)[F.col("stratum")])
                              .select("stratum", "draw", "user_id").toArrow())
                chosen = per_user.filter(_first_by_draw(candidates, quotas))
            rows = chosen.select("user_id", F.explode("rows").alias("row")).select("user_id", "row.*")
            return rows.select(*columns).toArrow()
        finally:
            per_user.unpersist()

    def _interactions_per_user(self, columns: list[str], seed: int) -> DataFrame:
        """One row per user: ``rows`` (the user's interactions' ``columns``), ``stratum`` and
        ``draw`` (a seeded uniform hash of ``user_id``). The events are partitioned by user
        once; the per-sale and the per-user aggregations both keep that partitioning."""
        partitions = int(self.events.sparkSession.conf.get("spark.sql.shuffle.partitions"))
        uniform = F.pmod(F.xxhash64("user_id", F.lit(seed)), F.lit(1 << 53)) / float(1 << 53)
        return (self.interactions(partitions).groupBy("user_id")
                .agg(F.collect_list(F.struct(*columns)).alias("rows"))
                .withColumn("stratum", F.floor(F.log2(F.size("rows"))))
                .withColumn("draw", uniform))

    def events_since(self, days: int) -> DataFrame:
        """Events in the ``days`` days before ``as_of``."""
        since = F.lit(self.as_of - dt.timedelta(days=days)).cast("timestamp")
        return self.events.filter(F.col("ts") >= since)

    @functools.cached_property
    def open_sale_audience(self) -> pd.DataFrame:
        """Per open sale (rows in ``open_idx`` order): the distinct users who visited it
        (``visitors_Nd``) and who bought it (``buyers_Nd``) in the N days before ``as_of``, for N
        in :data:`AUDIENCE_WINDOWS`, and the distinct users who visited or bought it in each
        of the two weeks before (``users_7d``, ``users_prior_7d``). One pass over the events,
        shared by the signals that read it."""
        start = F.lit(self.as_of).cast("timestamp")

        def within(days: int, until: int = 0):
            return ((F.col("ts") >= start - F.expr(f"INTERVAL {days} DAYS"))
                    & (F.col("ts") < start - F.expr(f"INTERVAL {until} DAYS")))

        counts = [F.countDistinct(F.when(within(d) & (F.col("bought") == kind), F.col("user_id"))).alias(f"{name}_{d}d")
                  for name, kind in (("visitors", False), ("buyers", True)) for d in AUDIENCE_WINDOWS]
        counts += [F.countDistinct(F.when(within(7), F.col("user_id"))).alias("users_7d"),
                   F.countDistinct(F.when(within(14, 7), F.col("user_id"))).alias("users_prior_7d")]
        longest = max(*AUDIENCE_WINDOWS, 14)
        found = (self.events_since(longest).filter(F.col("sale_idx").isin([int(i) for i in self.open_idx]))
                 .groupBy("sale_idx").agg(*counts).toPandas().set_index("sale_idx"))
        return found.reindex(self.open_idx, fill_value=0).astype(float).reset_index(drop=True)

    def active_users(self, lookback_days: int) -> DataFrame:
        """Users who visited or bought in the ``lookback_days`` days before ``as_of``."""
        return self.events_since(lookback_days).select("user_id").distinct()

    def user_histories(self, users: DataFrame, partitions: int | None = None) -> DataFrame:
        """``users`` (one row per user_id, any extra columns) with each user's history as
        aligned arrays: ``items`` (sale indices), ``bought`` (flags), ``age_days`` (days from
        the last interaction to the start of ``as_of``), ``visits`` (how many times the user
        visited the sale) and ``visit_age_days`` (days since the last of them; null if never);
        empty if none.

        With ``partitions``, hash-partitioned by ``user_id`` into that many: the events are
        shuffled once, and both aggregations and the join keep that partitioning.
        """
        start = F.lit(self.as_of).cast("timestamp")
        age = (F.unix_timestamp(start) - F.unix_timestamp("last_ts")) / 86400.0
        visit_age = (F.unix_timestamp(start) - F.unix_timestamp("last_visit_ts")) / 86400.0
        grouped = (self.interactions(partitions).withColumn("age_days", age)
                   .withColumn("visit_age_days", visit_age).groupBy("user_id").agg(
            F.sort_array(F.collect_list(F.struct("sale_idx", "bought", "age_days", "visits", "visit_age_days")))
            .alias("history")))
        empty = {"sale_idx": "array<int>", "bought": "array<boolean>", "age_days": "array<double>",
                 "visits": "array<int>", "visit_age_days": "array<double>"}
        if partitions is not None:
            users = users.repartition(partitions, "user_id")
        joined = users.join(grouped, "user_id", "left")
        for field, name in (("sale_idx", "items"), ("bought", "bought"), ("age_days", "age_days"),
                            ("visits", "visits"), ("visit_age_days", "visit_age_days")):
            joined = joined.withColumn(name, F.coalesce(F.col(f"history.{field}"), F.array().cast(empty[field])))
        return joined.drop("history")


def purchases_on(tables: Tables, catalog: Catalog, day: dt.date) -> DataFrame:
    """Purchases made during ``day`` that a night could have recommended: of sales open that
    day, and not bought by the same user before it. ``user_id, sale_id, sale_idx``.

    These are the labels of ``day`` (training positives, calibration, evaluation truth); they
    are never features: no :class:`ScoringContext` for ``day`` contains them. A repurchase is
    left out because the night never recommends a sale its user has bought: a label it can
    never earn would teach the meta-model, and count against it, for nothing.
    """
    start = F.lit(day).cast("timestamp")
    return (not_bought_before(tables.purchases.filter(
                (F.col("ts") >= start) & (F.col("ts") < start + F.expr("INTERVAL 1 DAY"))), tables, day)
            .join(catalog.index, "sale_id")
            .filter(F.col("sale_idx").isin([int(i) for i in catalog.open_on(day)]))
            .select("user_id", "sale_id", "sale_idx"))


def not_bought_before(purchases: DataFrame, tables: Tables, day: dt.date) -> DataFrame:
    """``purchases`` without the (user, sale) pairs that the user had bought before ``day``
    (the pairs a night masks)."""
    earlier = (tables.purchases.filter(F.col("ts") < F.lit(day).cast("timestamp"))
               .select("user_id", "sale_id").distinct())
    return purchases.join(earlier, ["user_id", "sale_id"], "left_anti")
