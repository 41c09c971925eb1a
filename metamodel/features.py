"""Meta-model features beyond the recommenders' scores.

Signals honour the :class:`~salerank.recommenders.Recommender` interface (fitted on the
point-in-time context, scoring a block of users against the open sales), so they travel
the same per-partition path and are point-in-time for the same reason; they are never
ranking strategies of their own.  Ranks within the user are derived from the
recommenders' scores of the whole block, before any negative sampling.
"""
from __future__ import annotations

import numpy as np

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


def compact(block: np.ndarray) -> np.ndarray:
    """``block`` (users x sales), or the one row or column that it repeats: a score that is
    the same for every user (popularity, days open) or for every sale (recency) is then
    transformed once per block instead of once per pair."""
    if block.ndim == 2 and block.size:
        if (block[-1] == block[0]).all() and (block == block[:1]).all():
            return block[:1]
        if (block[:, -1] == block[:, 0]).all() and (block == block[:, :1]).all():
            return block[:, :1]
    return block


def within_user_ranks(scores: np.ndarray, depth: int | None = None) -> np.ndarray:
    """The rank of every open sale within its user's row of finite ``scores``, as int32:
    1 = highest, and ties share the best rank (``scipy.stats.rankdata(-scores,
    method="min", axis=1)``, exactly); with ``depth``, ranks beyond it are ``depth + 1``.

    One argsort and one sort of values per row instead of rankdata's several passes (with
    ``depth``, a partition and a sort of the best ``depth`` only); a score that is the same
    for every user (popularity) is ranked once for the block, and one that is the same for
    every sale ties everywhere.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return np.zeros(scores.shape, dtype=np.int32)
    repeated = compact(scores)
    if repeated.shape != scores.shape:
        return np.broadcast_to(within_user_ranks(repeated, depth), scores.shape)
    n, m = scores.shape
    if depth is not None and depth < m:
        return _ranks_to_depth(scores, depth)
    descending = np.negative(scores)
    order = np.argsort(descending, axis=1)
    descending.sort(axis=1)
    ranks = np.empty((n, m), dtype=np.int32)
    ranks.ravel()[(order + np.arange(0, n * m, m)[:, None]).ravel()] = _tie_ranks(descending).ravel()
    return ranks


def _tie_ranks(ascending: np.ndarray) -> np.ndarray:
    """The "min" rank (1-based) of each position of rows sorted in ascending order: a tie
    group's rank is the position of its first member."""
    n, m = ascending.shape
    starts = np.tile(np.arange(1, m + 1, dtype=np.int32), (n, 1))
    tied = ascending[:, 1:] == ascending[:, :-1]
    rows = np.flatnonzero(tied.any(axis=1))  # continuous scores (ALS, BPR) rarely tie
    if len(rows):
        starts[:, 1:][tied] = 0
        starts[rows] = np.maximum.accumulate(starts[rows], axis=1)
    return starts


def _ranks_to_depth(scores: np.ndarray, depth: int) -> np.ndarray:
    """:func:`within_user_ranks` capped at ``depth + 1`` (``1 <= depth < sales``)."""
    n, m = scores.shape
    descending = np.negative(scores)
    best = np.argpartition(descending, depth - 1, axis=1)[:, :depth]  # every sale better than the depth-th
    values = np.take_along_axis(descending, best, axis=1)
    order = np.argsort(values, axis=1)
    best, values = np.take_along_axis(best, order, axis=1), np.take_along_axis(values, order, axis=1)
    starts = _tie_ranks(values)
    ranks = np.full((n, m), depth + 1, dtype=np.int32)
    np.put_along_axis(ranks, best, starts, axis=1)
    # sales tied with the depth-th share its rank, whether the partition chose them or not
    boundary = descending == values[:, -1:]
    ranks[boundary] = np.broadcast_to(starts[:, -1:], (n, m))[boundary]
    return ranks


def with_ranks(scores: dict[str, np.ndarray], ranked: tuple[str, ...],
               depth: int | None = None) -> dict[str, np.ndarray]:
    """``scores`` plus, for each name in ``ranked``, the rank of every open sale within the
    user's row (see :func:`within_user_ranks`), as float."""
    extra = {rank_name(n): within_user_ranks(scores[n], depth).astype(float) for n in ranked}
    return {**scores, **extra}
