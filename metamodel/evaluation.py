"""Ranking metrics of top-k lists against what users actually bought."""
from __future__ import annotations

import numpy as np
import pandas as pd

PER_USER = ("precision", "recall", "ndcg", "map", "hit_rate", "revenue")


def per_user_metrics(recommended: pd.DataFrame, bought: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each strategy's metrics for each user who bought something.

    Parameters
    ----------
    recommended : DataFrame
        ``strategy, user_id, rank, sale_id`` for (at least) the users in ``bought``.
    bought : DataFrame
        ``user_id, sale_id`` and optionally ``amount`` (revenue; 0 when missing): the
        purchases to recover.  Users who bought nothing are not evaluated.

    Returns
    -------
    DataFrame with ``strategy, user_id`` and ``precision, recall, ndcg, map, hit_rate,
    revenue`` at ``k`` (binary relevance; a user missing from a strategy's lists scores 0).
    """
    truth = bought.copy()
    truth["amount"] = truth["amount"].fillna(0.0) if "amount" in truth else 0.0
    truth = truth.groupby(["user_id", "sale_id"], as_index=False)["amount"].sum()
    relevant = truth.groupby("user_id").size().rename("relevant")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = relevant.clip(upper=k).map(lambda n: discounts[:n].sum())
    frames = []
    for strategy, recs in recommended[recommended["rank"] <= k].groupby("strategy"):
        hits = recs[["user_id", "rank", "sale_id"]].merge(truth, on=["user_id", "sale_id"])
        hits = hits.sort_values(["user_id", "rank"], kind="stable")
        # precision at each hit's rank, for average precision
        hits["precision_at_rank"] = (hits.groupby("user_id").cumcount() + 1) / hits["rank"]
        by_user = hits.groupby("user_id")
        per_user = pd.DataFrame({
            "hits": by_user.size(),
            "dcg": by_user["rank"].agg(lambda r: discounts[r.to_numpy() - 1].sum()),
            "ap_sum": by_user["precision_at_rank"].sum(),
            "revenue": by_user["amount"].sum(),
        }).reindex(relevant.index, fill_value=0.0)
        frames.append(pd.DataFrame({
            "strategy": strategy, "user_id": relevant.index,
            "precision": per_user["hits"].to_numpy() / k,
            "recall": (per_user["hits"] / relevant).to_numpy(),
            "ndcg": (per_user["dcg"] / ideal).to_numpy(),
            "map": (per_user["ap_sum"] / relevant.clip(upper=k)).to_numpy(),
            "hit_rate": (per_user["hits"] > 0).astype(float).to_numpy(),
            "revenue": per_user["revenue"].to_numpy(),
        }))
    columns = ["strategy", "user_id", *PER_USER]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def summarise(per_user: pd.DataFrame, k: int) -> pd.DataFrame:
    """Mean of :func:`per_user_metrics` per strategy: ``precision@k, ..., users``."""
    if per_user.empty:
        return pd.DataFrame(columns=[*(f"{m}@{k}" for m in PER_USER), "users"])
    means = per_user.groupby("strategy")[list(PER_USER)].mean().rename(columns=lambda m: f"{m}@{k}")
    means["users"] = per_user.groupby("strategy")["user_id"].nunique()
    return means


def ranking_metrics(recommended: pd.DataFrame, bought: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per strategy, the mean over the buyers in ``bought`` of precision@k, recall@k,
    NDCG@k, MAP@k, hit-rate@k and revenue@k (see :func:`per_user_metrics`)."""
    return summarise(per_user_metrics(recommended, bought, k), k)


LEVEL = 0.95  # of every interval


def bootstrap_means(values: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """The column means of ``values`` (units × columns; NaN where a column has no value for a
    unit) over ``replicates`` resamples of the units with replacement: (replicates, columns).

    A replicate draws as many units as there are, uniformly with replacement, and applies the
    estimator to them: per column, the mean over the drawn units that have a value.  Every
    column sees the same draws, so differences of columns are paired.  Counts of draws per
    unit times the values, a few replicates at a time (~100 MB at any size), on one BLAS
    thread: the same bits whatever the number of cores, and no threads spinning
    against a busy core (100,000 units × 36 columns × 1,000 replicates: ~2 s).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        return _bootstrap_means(np.asarray(values, dtype=float), replicates, rng)


def _bootstrap_means(values: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    units = len(values)
    present = np.ascontiguousarray(~np.isnan(values), dtype=float)  # float: BLAS, not a generic loop
    filled = np.ascontiguousarray(np.nan_to_num(values, nan=0.0))
    means = np.empty((replicates, values.shape[1]))
    chunk = max(1, (1 << 22) // max(units, 1))
    for first in range(0, replicates, chunk):
        size = min(chunk, replicates - first)
        draws = rng.integers(0, units, size=(size, units)) + (np.arange(size) * units)[:, None]
        counts = np.bincount(draws.ravel(), minlength=size * units).reshape(size, units).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):  # a column drawn no value: NaN
            means[first:first + size] = (counts @ filled) / (counts @ present)
    return means


def percentile_interval(replicated: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """(2, ...) the lower and upper percentile bounds of replicates along the first axis."""
    tail = (1 - level) / 2
    return np.nanquantile(replicated, [tail, 1 - tail], axis=0)


def verdict(low: float, high: float) -> str:
    """B against A from the interval of B - A: ``higher``, ``lower`` or, when it covers 0,
    ``no detectable difference``."""
    return "higher" if low > 0 else "lower" if high < 0 else "no detectable difference"


class Resampled:
    """Every strategy's mean metrics (:func:`per_user_metrics`) over one bootstrap of the
    units (``unit`` columns: a (day, user) pair in the backtest), the same draws for every
    strategy: intervals of each mean, and paired intervals of differences."""

    def __init__(self, per_user: pd.DataFrame, replicates: int, seed, unit=("day", "user_id")):
        self.strategies = sorted(per_user["strategy"].unique())
        wide = (per_user.set_index([*unit, "strategy"])[list(PER_USER)].unstack("strategy")
                .reindex(columns=pd.MultiIndex.from_product([PER_USER, self.strategies])))
        replicated = bootstrap_means(wide.to_numpy(), replicates, np.random.default_rng(seed))
        # columns are (metric, strategy): replicates × metrics × strategies
        self.replicated = replicated.reshape(replicates, len(PER_USER), len(self.strategies))

    def _of(self, strategy: str) -> np.ndarray:
        return self.replicated[:, :, self.strategies.index(strategy)]

    def interval(self, strategy: str) -> dict[str, tuple[float, float]]:
        """Per metric, the 95 % percentile interval of the strategy's mean."""
        low, high = percentile_interval(self._of(strategy))
        return {m: (float(a), float(b)) for m, a, b in zip(PER_USER, low, high)}

    def difference(self, a: str, b: str) -> dict[str, tuple[float, float]]:
        """Per metric, the paired 95 % percentile interval of mean(b) - mean(a)."""
        low, high = percentile_interval(self._of(b) - self._of(a))
        return {m: (float(x), float(y)) for m, x, y in zip(PER_USER, low, high)}


def validation_ndcg(model, examples: pd.DataFrame, k: int) -> tuple[float, int]:
    """NDCG@k of ``model`` over the (user, day) lists of labelled ``examples``, and how many
    lists.

    A list is one buyer's examples of one day: the sales they bought (relevant) and the
    negatives sampled among the sales open that day that they did not buy (every sampled
    negative, ``metamodel.negatives_per_purchase`` per purchase, not the subsample a model
    was fitted with). The model ranks each list by its probability (ties by ``sale_id``, never
    by label) and its NDCG@k is averaged over the lists with equal weight (binary relevance,
    as ``per_user_metrics``). With about ten negatives per purchase a list is short, so this
    is higher than the NDCG of a night, which ranks every open sale: it compares models on the
    same rows, it does not predict a night's number.
    """
    frame = examples[["user_id", "day", "sale_id", "label"]].copy()
    frame["list"] = frame["user_id"].astype(str) + "\x1f" + frame["day"].astype(str)
    frame["score"] = model.predict_proba(examples[model.feature_names].to_numpy(dtype=float))
    frame = frame.sort_values(["list", "score", "sale_id"], ascending=[True, False, True], kind="stable")
    frame["rank"] = frame.groupby("list").cumcount() + 1
    recommended = frame.rename(columns={"user_id": "buyer", "list": "user_id"}).assign(strategy="model")
    bought = recommended.loc[recommended["label"] == 1, ["user_id", "sale_id"]]
    per_list = per_user_metrics(recommended[["strategy", "user_id", "rank", "sale_id"]], bought, k)
    return float(per_list["ndcg"].mean()), len(per_list)
