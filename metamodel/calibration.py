"""From the meta-model's log-odds to the probability that a user buys a sale on a day.

The meta-model is fitted on buyers only, with a few sampled negatives per purchase: its raw
sigmoid is the probability of a purchase *among those examples*, orders of magnitude above the
real rate, and it moves with the negatives ratio. So the published probability is calibrated on
unsampled days instead. On each calibration day (the training window's validation days), every
active user (as the night ranks them) is paired with every open sale they have not bought. Every
purchase is kept, and a uniform random ``rate`` of the other pairs, weighted ``1 / rate``, so the
weighted pairs stand for all of them. A one-feature logistic regression of the purchase on the
model's log-odds (Platt scaling) on those pairs gives ``P(buy) = sigmoid(slope · z + intercept)``.
It is monotone in ``z``, so the ranking does not change.

The same pairs, drawn on later days, measure the probabilities: the weighted sum of the
probabilities estimates the purchases expected over every ranked pair, to be compared with those
observed (:func:`calibration_check`).
"""
from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from scipy.special import expit, logit

from ..features.history import Catalog, ScoringContext, purchases_on
from ..recommenders import Recommender, fit_all
from ..recommenders.scoring import Block, released, score_users
from .signals import with_ranks

PAIR_COLUMNS = ["user_id", "day", "sale_id", "label", "weight"]


@dataclass(frozen=True)
class SamplePairs:
    """Emit, for each user of a block, every open sale they bought that day and a uniform
    ``rate`` of the other open sales (``weight`` 1 and ``1 / rate``), leaving out what they had
    bought before (the night never recommends it). ``ranked``: see ``SampleExamples``."""

    day: dt.date
    rate: float
    seed: int
    ranked: tuple[str, ...] = ()
    rank_depth: int | None = None

    def __call__(self, block: Block) -> pd.DataFrame:
        bought_before = block.history.bought[:, block.open_idx].toarray() > 0
        scores = with_ranks(block.scores, self.ranked, self.rank_depth)
        n_open = len(block.open_idx)
        parts = []
        for row, (user, positives) in enumerate(zip(block.users["user_id"], block.users["positives"])):
            label = np.zeros(n_open, dtype=bool)
            if positives is not None and len(positives):
                label[np.searchsorted(block.open_idx, np.asarray(positives))] = True
            rng = np.random.default_rng([self.seed, zlib.crc32(str(user).encode()), self.day.toordinal(), 1])
            cols = np.flatnonzero(~bought_before[row] & (label | (rng.random(n_open) < self.rate)))
            parts.append(pd.DataFrame({
                "user_id": user, "day": self.day, "sale_id": block.open_ids[cols],
                "label": label[cols].astype(int),
                "weight": np.where(label[cols], 1.0, 1.0 / self.rate),
                **{name: np.broadcast_to(s, bought_before.shape)[row, cols] for name, s in scores.items()},
            }))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PAIR_COLUMNS + list(scores))


def day_pairs(tables, catalog: Catalog, scorers: list[Recommender], features: list[str], day: dt.date,
              lookback_days: int, max_pairs: int, seed: int, partitions: int,
              ranked: tuple[str, ...] = (), rank_depth: int | None = None) -> pd.DataFrame:
    """The weighted pairs of ``day`` (see :class:`SamplePairs`) for the users active before it,
    with the features of ``scorers`` fitted on what was known at its start; about ``max_pairs``
    of them (every pair when there are fewer)."""
    context = ScoringContext.build(tables, catalog, day)
    active = context.active_users(lookback_days)
    n_users = active.count()
    if len(context.open_idx) == 0 or n_users == 0:
        return pd.DataFrame(columns=PAIR_COLUMNS + features)
    rate = min(1.0, max_pairs / (n_users * len(context.open_idx)))
    buyers = (purchases_on(tables, catalog, day)
              .groupBy("user_id").agg(F.array_sort(F.collect_set("sale_idx")).alias("positives")))
    users = active.join(buyers, "user_id", "left")
    schema = ", ".join(["user_id string", "day date", "sale_id string", "label int", "weight double"]
                       + [f"{name} double" for name in features])
    emit = SamplePairs(day, rate, seed, ranked, rank_depth)
    with released():
        pairs = score_users(context, fit_all(scorers, context), users, emit, schema, partitions).toPandas()
    return pairs.sort_values(["user_id", "sale_id"], kind="stable").reset_index(drop=True)


def fit_calibration(log_odds: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of Platt scaling fitted on weighted pairs, by Newton's method to
    the exact maximum likelihood: at it the probabilities sum to the purchases (a generic
    solver stops early, its tolerance being large beside rates of 1e-4). A model whose log-odds
    do not rise with purchases (slope <= 0) gets slope 0: every pair the observed rate."""
    labels, weights = np.asarray(labels, dtype=float), np.asarray(weights, dtype=float)
    base = float(np.clip(np.average(labels, weights=weights), 1e-12, 1 - 1e-12))
    log_odds = np.asarray(log_odds, dtype=float)
    if labels.min() == labels.max() or np.ptp(log_odds) == 0:
        # no purchase (or only purchases), or one log-odds for every pair (a model that learnt
        # nothing, whose slope and intercept cannot be told apart): the observed rate
        return 0.0, float(logit(base))
    x = np.column_stack([log_odds, np.ones(len(labels))])
    beta = np.array([0.0, logit(base)])
    for _ in range(100):
        p = expit(x @ beta)
        gradient = x.T @ (weights * (labels - p))
        hessian = (x * (weights * p * (1 - p))[:, None]).T @ x
        # least squares: a Hessian that is singular in floating point (log-odds of a few values
        # that separate the purchases) takes the smallest step instead of raising
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    slope, intercept = float(beta[0]), float(beta[1])
    return (slope, intercept) if slope > 0 else (0.0, float(logit(base)))


def calibration_check(probability: np.ndarray, pairs: pd.DataFrame, bins: int = 10) -> tuple[dict, pd.DataFrame]:
    """Expected purchases (the weighted sum of ``probability`` over ``pairs``: every ranked
    pair, estimated from the sample) against the observed ones, and a reliability table: pairs
    grouped by predicted probability into ``bins`` of equal weight, with the mean prediction
    and the observed purchase rate of each."""
    weights, labels = pairs["weight"].to_numpy(), pairs["label"].to_numpy()
    expected, observed = float(np.sum(weights * probability)), float(labels.sum())
    summary = {"pairs": float(weights.sum()), "expected_purchases": expected, "observed_purchases": observed,
               "expected_over_observed": expected / observed if observed else float("nan")}
    order = np.argsort(probability, kind="stable")
    share = np.cumsum(weights[order]) / weights.sum()
    which = np.empty(len(order), dtype=int)
    which[order] = np.minimum((share * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": which, "w": weights, "wp": weights * probability, "y": labels})
    table = frame.groupby("bin").agg(pairs=("w", "sum"), expected=("wp", "sum"), observed=("y", "sum"))
    table["predicted"] = table["expected"] / table["pairs"]
    table["observed_rate"] = table["observed"] / table["pairs"]
    return summary, table

