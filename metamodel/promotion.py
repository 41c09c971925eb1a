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

from .evaluation import validation_ndcg
from .model import MetaModel
from .training import subsample_negatives, validation_split

__all__ = ["incomparable", "not_worse", "validated_candidate", "validation_ndcg", "validation_split"]


def validated_candidate(examples: pd.DataFrame, model: MetaModel, metrics: dict,
                        validation_days: int) -> MetaModel | None:
    """``model``'s settings (features, ranks, the ``chosen_C`` and ``chosen_negative_ratio``
    of ``metrics``) fitted on the days before the validation days; None when training could
    not validate (``metrics`` has no ``validation_auc``: too few days, or one class only)."""
    if "validation_auc" not in metrics:
        return None
    earlier, _ = validation_split(examples, validation_days)
    sample = subsample_negatives(earlier, int(metrics["chosen_negative_ratio"]))
    return MetaModel(model.feature_names, metrics["chosen_C"], model.ranked, model.rank_depth, model.kind).fit(sample)


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
