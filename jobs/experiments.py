"""A/B experiments: who sees which ranking strategy, and the per-variant exports for the website.

An experiment (declared under ``experiments`` in the configuration) splits users between
variants by a salted hash of the user id: ``bucket = int(sha256(salt + ":" + user_id)[:15],
16) / 16**15`` is a number in [0, 1) that depends on nothing else, so a user's variant is the
same every night, on every machine, whatever else is in the data. Variants own consecutive
slices of [0, 1) in the order declared, sized by their weights; the first variant is the
control of ``salerank ab report``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..conf import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HASH_DIGITS = 15  # 60 bits of the digest: fits a signed long in Spark


@dataclass(frozen=True)
class Variant:
    name: str
    strategy: str
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    start: dt.date
    end: dt.date
    variants: tuple[Variant, ...]

    def running_on(self, day: dt.date) -> bool:
        return self.start <= day <= self.end

    @property
    def boundaries(self) -> list[float]:
        """Upper end of each variant's slice of [0, 1)."""
        total, upper, edges = sum(v.weight for v in self.variants), 0.0, []
        for variant in self.variants:
            upper += variant.weight / total
            edges.append(upper)
        edges[-1] = 1.0
        return edges


def bucket(salt: str, user_id: str) -> float:
    """The user's place in [0, 1) for an experiment with ``salt`` (see the module docstring)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
    return int(digest[:HASH_DIGITS], 16) / 16 ** HASH_DIGITS


def variant_of(experiment: Experiment, user_id: str) -> str:
    place = bucket(experiment.salt, user_id)
    return next(v.name for v, edge in zip(experiment.variants, experiment.boundaries) if place < edge)


def parse_experiments(config: dict, strategies: list[str]) -> list[Experiment]:
    """The configured experiments, checked: names usable as file names, unique, positive
    weights, known strategies, ``start <= end``."""
    declared = config.get("experiments") or []
    if not isinstance(declared, list):
        raise ConfigError("experiments: expected a list of experiments")
    experiments, seen = [], set()
    for i, spec in enumerate(declared):
        where = f"experiments[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with name, salt, start, end, variants")
        unknown = set(spec) - {"name", "salt", "start", "end", "variants"}
        missing = {"name", "salt", "start", "end", "variants"} - set(spec)
        if unknown or missing:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        name = str(spec["name"])
        if not NAME.match(name) or name in seen:
            raise ConfigError(f"{where}: name {name!r} must be unique and made of letters, digits, '.', '_', '-'")
        seen.add(name)
        start, end = (_day(spec[key], f"{where}.{key}") for key in ("start", "end"))
        if end < start:
            raise ConfigError(f"{where}: end {end} is before start {start}")
        variants = tuple(_variant(v, f"{where}.variants[{j}]", strategies)
                         for j, v in enumerate(spec["variants"] or []))
        if len(variants) < 2 or len({v.name for v in variants}) < len(variants):
            raise ConfigError(f"{where}: needs at least two variants with distinct names")
        experiments.append(Experiment(name, str(spec["salt"]), start, end, variants))
    return experiments


def _day(value, where: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{where}: not a date in YYYY-MM-DD form: {value!r}") from None


def _variant(spec, where: str, strategies: list[str]) -> Variant:
    if not isinstance(spec, dict) or set(spec) != {"name", "strategy", "weight"}:
        raise ConfigError(f"{where}: expected exactly name, strategy and weight")
    name = str(spec["name"])
    if not NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must be made of letters, digits, '.', '_', '-'")
    if spec["strategy"] not in strategies:
        raise ConfigError(f"{where}: unknown strategy {spec['strategy']!r} (one of {', '.join(strategies)})")
    try:
        weight = float(spec["weight"])
    except (TypeError, ValueError):
        weight = -1.0
    if not weight > 0:
        raise ConfigError(f"{where}: weight must be a positive number, got {spec['weight']!r}")
    return Variant(name, spec["strategy"], weight)


def assign(users: DataFrame, experiment: Experiment) -> DataFrame:
    """``user_id, variant, strategy`` for every user, in Spark (same rule as :func:`bucket`)."""
    digest = F.sha2(F.concat(F.lit(experiment.salt + ":"), F.col("user_id")), 256)
    place = F.conv(F.substring(digest, 1, HASH_DIGITS), 16, 10).cast("long") / float(16 ** HASH_DIGITS)
    variant = strategy = None
    for v, edge in zip(experiment.variants, experiment.boundaries):  # the last edge is 1.0
        inside = place < edge
        variant = F.when(inside, v.name) if variant is None else variant.when(inside, v.name)
        strategy = F.when(inside, v.strategy) if strategy is None else strategy.when(inside, v.strategy)
    return users.select("user_id", variant.alias("variant"), strategy.alias("strategy"))


def export_lines(ranked: DataFrame, users: DataFrame, experiment: Experiment, run_date: dt.date,
                 model_label: str, metamodel: str) -> DataFrame:
    """One JSON line per user with recommendations: ``variant`` column plus ``value`` (the
    line), sorted by user. The schema is documented in docs/exports.md."""
    assigned = assign(users, experiment)
    lists = _lists(ranked.join(assigned, ["user_id", "strategy"]), "user_id", "variant", "strategy")
    line = F.to_json(F.struct("user_id", F.lit(experiment.name).alias("experiment"), "variant",
                              F.lit(run_date.isoformat()).alias("run_date"), "strategy",
                              model_version_column(metamodel, model_label), "recommendations"))
    return lists.select("user_id", "variant", line.alias("value"))


def _lists(rows: DataFrame, *keys: str) -> DataFrame:
    """``keys`` and ``recommendations``: each group's rows as ``{position, sale_id, score}``, by rank."""
    return rows.groupBy(*keys).agg(F.sort_array(F.collect_list(F.struct(
        F.col("rank").alias("position"), "sale_id", "score"))).alias("recommendations"))


def model_version_column(metamodel: str, model_label: str):
    """``model_version``: the registry label of the meta-model's version; null for a single
    recommender's list."""
    return F.when(F.col("strategy") == metamodel, F.lit(model_label)).alias("model_version")


def fallback_lines(fallback: DataFrame, experiment: Experiment, run_date: dt.date, model_label: str,
                   metamodel: str) -> DataFrame:
    """One JSON line per variant: its strategy's fallback list (``metamodel.ranking.fallback_lists``),
    for a user its file has no line for; ``"fallback": true`` and no ``user_id``. Sorted by
    variant, in the variants' declared order. The schema is documented in docs/exports.md."""
    spark = fallback.sparkSession
    variants = spark.createDataFrame([(i, v.name, v.strategy) for i, v in enumerate(experiment.variants)],
                                     "order int, variant string, strategy string")
    lists = _lists(fallback.join(F.broadcast(variants), "strategy"), "order", "variant", "strategy")
    line = F.to_json(F.struct(F.lit(experiment.name).alias("experiment"), "variant",
                              F.lit(run_date.isoformat()).alias("run_date"), "strategy",
                              model_version_column(metamodel, model_label), F.lit(True).alias("fallback"),
                              "recommendations"))
    return lists.repartition(1).sortWithinPartitions("order").select(line.alias("value"))
