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
