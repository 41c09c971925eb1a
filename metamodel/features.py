"""Meta-model features beyond the recommenders' scores.

Signals honour the :class:`~salerank.recommenders.Recommender` interface (fitted on the
point-in-time context, scoring a block of users against the open sales), so they travel
the same per-partition path and are point-in-time for the same reason; they are never
ranking strategies of their own.  Ranks within the user are derived from the
recommenders' scores of the whole block, before any negative sampling.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ..recommenders.base import Recommender, UserHistory

NO_HISTORY_DAYS = 365.0  # recency of a user with no history


def _days(dates, as_of) -> np.ndarray:
    return np.array([(as_of - d).days for d in dates], dtype=float)


class DaysOpen(Recommender):
    """Days since the sale opened (0 on its first day)."""

    name = "days_open"

    def fit(self, context) -> DaysOpen:
        sales = context.catalog.sales.iloc[context.open_idx]
        self.values_ = _days(sales["open_date"], context.as_of)
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        return np.broadcast_to(self.values_, (len(history), len(self.values_)))


class DaysLeft(Recommender):
    """Days until the sale closes (0 on its last day)."""

    name = "days_left"

    def fit(self, context) -> DaysLeft:
        sales = context.catalog.sales.iloc[context.open_idx]
        self.values_ = -_days(sales["close_date"], context.as_of)
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        return np.broadcast_to(self.values_, (len(history), len(self.values_)))


class PriceFit(Recommender):
    """How far a sale's price is from what the user usually pays: ``-|log(price / level)|``,
    where the level is the weighted geometric mean price of the sales the user visited
    (weight 1) and bought (weight 1 + ``purchase_weight``).  0 when the user has no priced
    history or the sale no price (no evidence either way)."""

    name = "price_fit"

    def __init__(self, purchase_weight: float = 3.0):
        self.purchase_weight = purchase_weight

    def fit(self, context) -> PriceFit:
        sales = context.catalog.sales
        prices = sales["price"].to_numpy(dtype=float) if "price" in sales else np.full(len(sales), np.nan)
        valid = np.isfinite(prices) & (prices > 0)
        self.log_price_ = np.where(valid, np.log(np.where(valid, prices, 1.0)), 0.0)
        self.priced_ = valid.astype(float)
        self.open_idx_ = context.open_idx
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        weights = history.weighted(1.0, self.purchase_weight)
        total = np.asarray(weights @ self.priced_).ravel()
        level = np.divide(np.asarray(weights @ self.log_price_).ravel(), total,
                          out=np.zeros(len(total)), where=total > 0)
        gap = -np.abs(self.log_price_[self.open_idx_][None, :] - level[:, None])
        known = (total > 0)[:, None] & (self.priced_[self.open_idx_] > 0)[None, :]
        return np.where(known, gap, 0.0)


class Recency(Recommender):
    """Days since the user's last visit or purchase (``NO_HISTORY_DAYS`` if none): the same
    for every sale, it lets the model trust personal scores less for lapsed users."""

    name = "recency"

    def fit(self, context) -> Recency:
        self.n_open_ = len(context.open_idx)
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        last = np.full(len(history), NO_HISTORY_DAYS)
        if history.age_days is not None and len(history.age_days):
            seen = history.seen
            rows = np.repeat(np.arange(len(history)), np.diff(seen.indptr))
            np.minimum.at(last, rows, history.age_days)
        return np.broadcast_to(last[:, None], (len(history), self.n_open_))


SIGNALS = {cls.name: cls for cls in (DaysOpen, DaysLeft, PriceFit, Recency)}


def signals_from_config(config: dict) -> list[Recommender]:
    """The signals named in ``config['metamodel']['signals']``."""
    names = config["metamodel"]["signals"]
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown meta-model signals {unknown}; choose from {sorted(SIGNALS)}")
    return [SIGNALS[n]() for n in names]


def rank_name(recommender: str) -> str:
    return f"rank_{recommender}"


def with_ranks(scores: dict[str, np.ndarray], ranked: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``scores`` plus, for each name in ``ranked``, the rank of every open sale within the
    user's row (1 = best; ties share the best rank, so sales a recommender cannot tell
    apart get the same rank)."""
    extra = {rank_name(n): rankdata(-np.asarray(scores[n], dtype=float), method="min", axis=1)
             .astype(float) for n in ranked}
    return {**scores, **extra}
