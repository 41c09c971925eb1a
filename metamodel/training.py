"""Training examples with negative sampling, and training of the meta-model.

For each day ``d`` of the training window, each purchase of a sale open on ``d`` is a
positive; up to ``negatives_per_purchase`` sales open on ``d`` that the user neither
bought that day nor before are negatives.  Every feature comes from
``ScoringContext.build(..., as_of=d)``: only events before ``d``.
"""
from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from ..features.history import Catalog, ScoringContext, purchases_on
from ..features.loading import Tables
from ..recommenders import Recommender, fit_all
from ..recommenders.scoring import Block, score_users
from .model import MetaModel


class TrainingDataError(ValueError):
    """There is not enough history before the date to train the meta-model."""


@dataclass(frozen=True)
class SampleExamples:
    """Emit positives and sampled negatives for the buyers of one day (``positives``)."""

    day: dt.date
    negatives_per_purchase: int
    seed: int

    def __call__(self, block: Block) -> pd.DataFrame:
        already_bought = block.history.bought[:, block.open_idx].toarray() > 0
        parts = []
        for row, (user, positives) in enumerate(zip(block.users["user_id"], block.users["positives"])):
            pos_cols = np.searchsorted(block.open_idx, np.sort(positives))
            allowed = ~already_bought[row]
            allowed[pos_cols] = False
            candidates = np.flatnonzero(allowed)
            rng = np.random.default_rng([self.seed, zlib.crc32(str(user).encode()), self.day.toordinal()])
            n_neg = min(len(candidates), self.negatives_per_purchase * len(pos_cols))
            neg_cols = np.sort(rng.choice(candidates, size=n_neg, replace=False))
            cols = np.concatenate([pos_cols, neg_cols])
            parts.append(pd.DataFrame({
                "user_id": user, "day": self.day, "sale_id": block.open_ids[cols],
                "label": np.r_[np.ones(len(pos_cols), int), np.zeros(n_neg, int)],
                **{name: s[row, cols] for name, s in block.scores.items()},
            }))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["user_id", "day", "sale_id", "label", *block.scores])


def examples_schema(recommenders: list[Recommender]) -> str:
    return ", ".join(["user_id string", "day date", "sale_id string", "label int"]
                     + [f"{r.name} double" for r in recommenders])


def day_examples(tables: Tables, catalog: Catalog, recommenders: list[Recommender], day: dt.date,
                 negatives_per_purchase: int, seed: int, partitions: int) -> pd.DataFrame:
    """The labelled examples of one day: its purchases of open sales and sampled negatives,
    scored with recommenders fitted on what was known at the start of ``day``."""
    context = ScoringContext.build(tables, catalog, day)
    if len(context.open_idx) == 0:
        return pd.DataFrame(columns=["user_id", "day", "sale_id", "label", *(r.name for r in recommenders)])
    buyers = (purchases_on(tables, catalog, day)
              .groupBy("user_id").agg(F.array_sort(F.collect_set("sale_idx")).alias("positives")))
    fitted = fit_all(recommenders, context)
    return score_users(context, fitted, buyers, SampleExamples(day, negatives_per_purchase, seed),
                       examples_schema(recommenders), partitions).toPandas()


def training_examples(tables: Tables, catalog: Catalog, recommenders: list[Recommender],
                      as_of: dt.date, train_days: int, negatives_per_purchase: int, seed: int,
                      partitions: int, cache: dict | None = None) -> pd.DataFrame:
    """Labelled examples for the ``train_days`` days before ``as_of``, features point-in-time.

    A day's examples do not depend on ``as_of``: a backtest passes the same ``cache`` dict
    for every date so that each day is computed once.
    """
    cache = {} if cache is None else cache
    frames = []
    for offset in range(train_days, 0, -1):
        day = as_of - dt.timedelta(days=offset)
        if day not in cache:
            cache[day] = day_examples(tables, catalog, recommenders, day, negatives_per_purchase,
                                      seed, partitions)
        frames.append(cache[day])
    filled = [f for f in frames if len(f)]
    examples = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=["label"])
    if not len(examples) or examples["label"].sum() == 0:
        raise TrainingDataError(
            f"no purchases of open sales in the {train_days} days before {as_of}: the meta-model "
            "has nothing to learn from (set metamodel.train_days higher, or check purchases.ts)")
    return examples.sort_values(["day", "user_id", "label", "sale_id"],
                                ascending=[True, True, False, True], kind="stable").reset_index(drop=True)


def train_metamodel(examples: pd.DataFrame, feature_names: list[str], C: float) -> tuple[MetaModel, dict]:
    """Fit on every day, after measuring on the last day a model fitted on the days before it."""
    last_day = examples["day"].max()
    earlier, validation = examples[examples["day"] < last_day], examples[examples["day"] == last_day]
    metrics = {"train_examples": float(len(examples)), "train_positives": float(examples["label"].sum()),
               "train_days": float(examples["day"].nunique())}
    if earlier["label"].nunique() == 2 and validation["label"].nunique() == 2:
        held_out = MetaModel(feature_names, C).fit(earlier).evaluate(validation)
        metrics.update({f"validation_{k}": v for k, v in held_out.items()})
    model = MetaModel(feature_names, C).fit(examples)
    metrics.update({f"train_{k}": v for k, v in model.evaluate(examples).items()})
    return model, metrics
