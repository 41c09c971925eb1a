"""Whether a newly trained meta-model may replace the one that serves: both ranked on the
same validation examples, by NDCG per user and day.

The comparison is made on the candidate's validation days, the last ``validation_days`` days
of its training window (those that chose its ``C`` and negatives ratio in
``train_metamodel``). The candidate is scored as it was validated: fitted with its chosen
``C`` and ratio on the days before them, so that it has not seen the purchases it is judged
on (the registered version is then refitted on every day). The champion is scored on exactly
the same rows as it is, whatever it was trained on.
"""
from __future__ import annotations

import pandas as pd

from .evaluation import per_user_metrics
from .model import MetaModel
from .training import subsample_negatives


def validation_split(examples: pd.DataFrame, validation_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The examples before the validation days, and those of the validation days: the last
    ``validation_days`` days that have examples (the last one when there are no more days
    than that), as in ``train_metamodel``."""
    days = sorted(examples["day"].unique())
    held = days[-validation_days:] if len(days) > validation_days else days[-1:]
    chosen = examples["day"].isin(held)
    return examples[~chosen], examples[chosen]


def validated_candidate(examples: pd.DataFrame, model: MetaModel, metrics: dict,
                        validation_days: int) -> MetaModel | None:
    """``model``'s settings (features, ranks, the ``chosen_C`` and ``chosen_negative_ratio``
    of ``metrics``) fitted on the days before the validation days; None when training could
    not validate (``metrics`` has no ``validation_auc``: too few days, or one class only)."""
    if "validation_auc" not in metrics:
        return None
    earlier, _ = validation_split(examples, validation_days)
    sample = subsample_negatives(earlier, int(metrics["chosen_negative_ratio"]))
    return MetaModel(model.feature_names, metrics["chosen_C"], model.ranked, model.rank_depth).fit(sample)


def validation_ndcg(model: MetaModel, examples: pd.DataFrame, k: int) -> tuple[float, int]:
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


def incomparable(champion: MetaModel, candidate: MetaModel) -> str | None:
    """Why ``champion`` cannot be scored on ``candidate``'s examples, or None when it can: it
    needs a feature they lack, or its ranks are cut at another depth than theirs."""
    missing = sorted(set(champion.feature_names) - set(candidate.feature_names))
    if missing:
        return (f"it needs the features {missing}, which this configuration does not produce "
                f"(it produces {sorted(candidate.feature_names)})")
    if champion.ranked and champion.rank_depth != candidate.rank_depth:
        return (f"its ranks are cut at depth {champion.rank_depth}, this configuration's at "
                f"{candidate.rank_depth} (metamodel.rank_depth)")
    return None


def not_worse(candidate_ndcg: float, champion_ndcg: float, tolerance: float) -> bool:
    """Whether the candidate may replace the champion: at most ``tolerance`` (absolute NDCG)
    below it. Rounded to 12 decimals, so that a tie computed in another order is a tie."""
    return round(candidate_ndcg - champion_ndcg + tolerance, 12) >= 0
