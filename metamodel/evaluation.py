"""Ranking metrics of top-k lists against what users actually bought."""
from __future__ import annotations

import numpy as np
import pandas as pd


def ranking_metrics(recommended: pd.DataFrame, bought: pd.DataFrame, k: int) -> pd.DataFrame:
    """Precision@k, recall@k and NDCG@k (binary relevance) per strategy.

    Parameters
    ----------
    recommended : DataFrame
        ``strategy, user_id, rank, sale_id`` for (at least) the users in ``bought``.
    bought : DataFrame
        ``user_id, sale_id``: the purchases to recover; users who bought nothing are
        not evaluated.

    Returns
    -------
    DataFrame indexed by strategy with ``precision@k, recall@k, ndcg@k, users``.
    """
    truth = bought.drop_duplicates(["user_id", "sale_id"])
    relevant = truth.groupby("user_id").size().rename("relevant")
    users = len(relevant)
    if users == 0:
        return pd.DataFrame(columns=[f"precision@{k}", f"recall@{k}", f"ndcg@{k}", "users"])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = relevant.clip(upper=k).map(lambda n: discounts[:n].sum())
    rows = {}
    for strategy, recs in recommended[recommended["rank"] <= k].groupby("strategy"):
        hits = recs.merge(truth, on=["user_id", "sale_id"])
        per_user = pd.DataFrame({
            "hits": hits.groupby("user_id").size(),
            "dcg": hits.groupby("user_id")["rank"].apply(lambda r: discounts[r.to_numpy() - 1].sum()),
        }).reindex(relevant.index, fill_value=0.0)
        rows[strategy] = {
            f"precision@{k}": float((per_user["hits"] / k).sum() / users),
            f"recall@{k}": float((per_user["hits"] / relevant).sum() / users),
            f"ndcg@{k}": float((per_user["dcg"] / ideal).sum() / users),
            "users": users,
        }
    return pd.DataFrame.from_dict(rows, orient="index")
