"""Meta-model features beyond the recommenders' scores.

Signals honour the :class:`~salerank.recommenders.Recommender` interface (fitted on the
point-in-time context, scoring a block of users against the open sales), so they travel
the same per-partition path and are point-in-time for the same reason; they are never
ranking strategies of their own.  Ranks within the user are derived from the
recommenders' scores of the whole block, before any negative sampling.
"""
from __future__ import annotations

import functools

import numpy as np

from ..features.history import AUDIENCE_WINDOWS
from ..recommenders.base import Recommender, SameForEveryUser, UserHistory
from .kernels import add_rank_lookup_rows

NO_HISTORY_DAYS = 365.0  # recency of a user with no history


def _days(dates, as_of) -> np.ndarray:
    return np.array([(as_of - d).days for d in dates], dtype=float)


class OfTheUsersOwnHistory(Recommender):
    """A signal read from each user's history of the open sales themselves."""

    def fit(self, context) -> OfTheUsersOwnHistory:
        self.open_idx_ = context.open_idx
        return self


class DaysOpen(SameForEveryUser):
    """Days since the sale opened (0 on its first day)."""

    name = "days_open"

    def fit(self, context) -> DaysOpen:
        sales = context.catalog.sales.iloc[context.open_idx]
        self.values_ = _days(sales["open_date"], context.as_of)
        return self


class DaysLeft(SameForEveryUser):
    """Days until the sale closes (0 on its last day)."""

    name = "days_left"

    def fit(self, context) -> DaysLeft:
        sales = context.catalog.sales.iloc[context.open_idx]
        self.values_ = -_days(sales["close_date"], context.as_of)
        return self


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
    """Days since the user's last visit or purchase (``NO_HISTORY_DAYS`` if none).

    The same for every sale of a user, so in the linear meta-model it cannot change the
    ranking of any user's sales: it only moves the user's probabilities up or down together
    (a lapsed user buys less). Not among the default signals; name it in
    ``metamodel.signals`` for the calibrated probability's sake, not the ranking's."""

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


class SaleVisits(OfTheUsersOwnHistory):
    """How many times the user visited the open sale before the day (0 if never)."""

    name = "sale_visits"

    def score(self, history: UserHistory) -> np.ndarray:
        return history.of_open_sales(history.visits, self.open_idx_, 0.0)


class DaysSinceSaleVisit(OfTheUsersOwnHistory):
    """Days from the user's last visit to the open sale to the start of the day
    (``NO_HISTORY_DAYS`` if they never visited it)."""

    name = "days_since_sale_visit"

    def score(self, history: UserHistory) -> np.ndarray:
        return history.of_open_sales(history.visit_age_days, self.open_idx_, NO_HISTORY_DAYS)


class VisitedSaleLastDay(OfTheUsersOwnHistory):
    """1 if the user visited the open sale in the day before (the strongest single sign of
    a flash-sale purchase), else 0."""

    name = "visited_sale_last_day"

    def score(self, history: UserHistory) -> np.ndarray:
        days = history.of_open_sales(history.visit_age_days, self.open_idx_, NO_HISTORY_DAYS)
        return (days <= 1.0).astype(float)


class Audience(SameForEveryUser):
    """One column of :attr:`ScoringContext.open_sale_audience` (distinct visitors or buyers of
    the open sale over a window), the same for every user."""

    def __init__(self, column: str):
        self.column = column
        self.name = column

    def fit(self, context) -> Audience:
        self.values_ = context.open_sale_audience[self.column].to_numpy()
        return self


class Trend(SameForEveryUser):
    """The open sale's trend: ``log((1 + users of the last 7 days) / (1 + users of the 7
    before))``, users who visited or bought it; the same for every user."""

    name = "trend_7d"

    def fit(self, context) -> Trend:
        audience = context.open_sale_audience
        self.values_ = np.log1p(audience["users_7d"].to_numpy()) - np.log1p(audience["users_prior_7d"].to_numpy())
        return self


SIGNALS = {cls.name: cls for cls in (DaysOpen, DaysLeft, PriceFit, Recency, SaleVisits, DaysSinceSaleVisit,
                                     VisitedSaleLastDay, Trend)}
SIGNALS.update({f"{kind}_{days}d": functools.partial(Audience, f"{kind}_{days}d")
                for kind in ("visitors", "buyers") for days in AUDIENCE_WINDOWS})


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
        if block.strides[0] == 0:  # np.broadcast_to of a row: no need to compare
            return block[:1]
        if block.strides[1] == 0:
            return block[:, :1]
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
    ``depth``, the compiled search of each row's best ``depth``, ``kernels.add_rank_lookup_rows``,
    looking the ranks up in a table of themselves); a score that is the same
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
    ranks.reshape(-1)[along_rows(ranks, order)] = _tie_ranks(descending)
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
    """:func:`within_user_ranks` capped at ``depth + 1`` (``1 <= depth < sales``): the
    ranks are looked up in a table of themselves."""
    ranks = np.zeros(scores.shape)
    add_rank_lookup_rows(ranks, np.ascontiguousarray(scores), np.arange(scores.shape[1] + 1.0), depth)
    return ranks.astype(np.int32)


def along_rows(block: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Flat indices of ``block[i, columns[i, j]]`` (``block`` C-contiguous): indexing the
    flattened block with them is several times faster than ``take_along_axis``."""
    return columns + np.arange(0, block.size, block.shape[1])[:, None]


def add_rank_lookup(out: np.ndarray, scores: np.ndarray, table: np.ndarray,
                    depth: int | None = None) -> np.ndarray:
    """``out += table[within_user_ranks(scores, depth)]``, in place (``out`` C-contiguous).

    With a depth, one compiled pass per row (``kernels.add_rank_lookup_rows``) finds its best
    ``depth`` and adds each sale's table value: no ``users x sales`` array of ranks is built.
    """
    if not out.flags.c_contiguous:  # the kernel writes rows of ``out`` in place
        raise ValueError("add_rank_lookup needs a C-contiguous out")
    scores = np.asarray(scores, dtype=float)
    if depth is None or depth >= scores.shape[1] or compact(scores).shape != scores.shape:
        out += np.take(table, within_user_ranks(scores, depth))
        return out
    table = np.asarray(table, dtype=float)
    if out.shape != scores.shape or len(table) < depth + 2:  # the kernel checks no bounds
        raise ValueError(f"add_rank_lookup: out {out.shape} for scores {scores.shape}, a table of "
                         f"{len(table)} for depth {depth}")
    return add_rank_lookup_rows(out, np.ascontiguousarray(scores), table, depth)


def with_ranks(scores: dict[str, np.ndarray], ranked: tuple[str, ...],
               depth: int | None = None) -> dict[str, np.ndarray]:
    """``scores`` plus, for each name in ``ranked``, the rank of every open sale within the
    user's row (see :func:`within_user_ranks`), as float."""
    extra = {rank_name(n): within_user_ranks(scores[n], depth).astype(float) for n in ranked}
    return {**scores, **extra}
