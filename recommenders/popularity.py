"""Popularity among the open sales: distinct users who visited or bought recently."""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from .base import SameForEveryUser


class Popularity(SameForEveryUser):
    """Score of an open sale = distinct users who visited or bought it in the
    ``window_days`` days before the scoring day; the same for every user."""

    name = "popularity"

    def __init__(self, window_days: int = 7):
        self.window_days = window_days

    def fit(self, context) -> Popularity:
        counts = (context.events_since(self.window_days)
                  .filter(F.col("sale_idx").isin([int(i) for i in context.open_idx]))
                  .groupBy("sale_idx").agg(F.countDistinct("user_id").alias("users"))
                  .toPandas())
        self.values_ = np.zeros(len(context.open_idx))
        # open_idx is sorted, so searchsorted maps a sale index to its column.
        self.values_[np.searchsorted(context.open_idx, counts["sale_idx"])] = counts["users"]
        return self
