"""Top-k selection per user: the nightly ranking."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from ..recommenders.scoring import Block
from .model import MetaModel

METAMODEL = "metamodel"
RANKING_SCHEMA = "strategy string, user_id string, rank int, sale_id string, score double"


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores of each row, best first; ties go to the lower
    column (the lower sale_id), so the ranking is reproducible.

    The same result as a stable full argsort, without sorting whole rows: a partition finds
    each row's k-th highest score, the ties at that boundary are settled by column, and only
    the k chosen are sorted. NaN counts as -inf.
    """
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    cols = np.nonzero(chosen)[1].reshape(n, k)  # k per row, in column order
    best = np.take_along_axis(scores, cols, axis=1)
    return np.take_along_axis(cols, np.argsort(-best, axis=1, kind="stable"), axis=1)


@dataclass(frozen=True)
class RankTopK:
    """Emit each user's top ``k`` open sales that they have not bought, for each strategy:
    ``"metamodel"`` (purchase probability) or the name of a single recommender."""

    model: MetaModel | None
    k: int
    strategies: tuple[str, ...]

    def __call__(self, block: Block) -> pd.DataFrame:
        already_bought = block.history.bought[:, block.open_idx].toarray() > 0
        parts = []
        for strategy in self.strategies:
            # the meta-model ranks by log-odds: its probability is computed for the top k only
            scores = (self.model.logit_blocks(block.scores) if strategy == METAMODEL
                      else np.array(block.scores[strategy], dtype=float))
            scores[already_bought] = -np.inf
            cols = top_k(scores, self.k)
            best = np.take_along_axis(scores, cols, axis=1)
            rows, ranks = np.nonzero(np.isfinite(best))
            best = best[rows, ranks]
            parts.append(pd.DataFrame({
                "strategy": strategy,
                "user_id": block.users["user_id"].to_numpy()[rows],
                "rank": (ranks + 1).astype(np.int32),
                "sale_id": block.open_ids[cols[rows, ranks]],
                "score": expit(best) if strategy == METAMODEL else best,
            }))
        return pd.concat(parts, ignore_index=True)
