"""How well rankings recover the generated world's true preferences."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .generator import purchase_probability


def truth_metrics(recommended: pd.DataFrame, user_truth: pd.DataFrame, sale_truth: pd.DataFrame,
                  open_sale_ids: list[str], k: int) -> pd.DataFrame:
    """Per strategy: NDCG@k with the true purchase probability as graded relevance (the
    ideal is the user's k most likely open sales) and the mean true probability of the
    recommended sales.

    Parameters
    ----------
    recommended : DataFrame
        ``strategy, user_id, rank, sale_id``.
    """
    users = sorted(recommended["user_id"].unique())
    user_rows = user_truth.set_index("user_id").loc[users].reset_index()
    sale_rows = sale_truth.set_index("sale_id").loc[list(open_sale_ids)].reset_index()
    probability = purchase_probability(user_rows, sale_rows)  # users x open sales
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    best = -np.sort(-probability, axis=1)[:, :k]
    ideal = (best * discounts[:best.shape[1]]).sum(axis=1)
    user_pos = pd.Series(np.arange(len(users)), index=users)
    sale_pos = pd.Series(np.arange(len(open_sale_ids)), index=list(open_sale_ids))
    rows = {}
    for strategy, recs in recommended[recommended["rank"] <= k].groupby("strategy"):
        gain = probability[user_pos[recs["user_id"]].to_numpy(), sale_pos[recs["sale_id"]].to_numpy()]
        dcg = np.bincount(user_pos[recs["user_id"]].to_numpy(), weights=gain * discounts[recs["rank"] - 1],
                          minlength=len(users))
        rows[strategy] = {f"true_ndcg@{k}": float(np.mean(dcg / ideal)),
                          f"mean_true_probability@{k}": float(gain.mean())}
    return pd.DataFrame.from_dict(rows, orient="index")
