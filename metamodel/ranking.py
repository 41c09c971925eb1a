"""Top-k selection per user: the nightly ranking."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ..recommenders import fit_all
from ..recommenders.scoring import Block, score_users
from .kernels import top_k_rows
from .signals import along_rows, compact, signals_from_config
from .model import MetaModel
from .rules import Rules

METAMODEL = "metamodel"
RANKING_SCHEMA = "strategy string, user_id string, rank int, sale_id string, score double"
FALLBACK_USER = ""  # no real user has this id: the loader refuses an empty user_id
FALLBACK = "fallback"  # the backtest's name of the meta-model's fallback list, given to every user


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores of each row, best first; ties go to the lower
    column (the lower sale_id), so the ranking is reproducible.

    The same result as a stable full argsort, without sorting whole rows: each row's best
    ``k`` are kept in a heap as it is read (``kernels.top_k_rows``), whatever the ties. NaN
    counts as -inf.
    """
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64)
    if k == m:
        return np.argsort(-np.where(np.isnan(scores), -np.inf, scores), axis=1, kind="stable")
    return top_k_rows(np.ascontiguousarray(scores, dtype=float), k)


@dataclass(frozen=True)
class RankTopK:
    """Emit each user's top ``k`` open sales that they have not bought, for each strategy:
    ``"metamodel"`` (purchase probability) or the name of a single recommender."""

    model: MetaModel | None
    k: int
    strategies: tuple[str, ...]
    rules: Rules | None = None  # business rules, applied to every strategy's list
    # timed apart by score_users: the meta-model's log-odds (ranks included), then every top-k
    steps = ("metamodel", "top_k")

    def __call__(self, block: Block) -> pa.Table:
        bought = block.history.bought[:, block.open_idx].tocsr()
        bought.eliminate_zeros()
        # built by Arrow's take: no Python string per row (20 rows per user on a night)
        user_ids = pa.array(block.users["user_id"].to_numpy(), pa.string())
        sale_ids = pa.array(block.open_ids, pa.string())
        parts = []
        for strategy in self.strategies:
            cols, best = self._top_k(strategy, block, bought)
            rows, ranks = np.nonzero(np.isfinite(best))
            best = best[rows, ranks]
            parts.append(pa.table({
                "strategy": pa.repeat(strategy, len(rows)).cast(pa.string()),
                "user_id": user_ids.take(rows),
                "rank": (ranks + 1).astype(np.int32),
                "sale_id": sale_ids.take(cols[rows, ranks]),
                "score": self.model.probability(best) if strategy == METAMODEL else best,
            }))
        return pa.concat_tables(parts)

    def _top_k(self, strategy: str, block: Block, bought: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Columns and scores of each user's top k unbought sales for ``strategy``."""
        if strategy == METAMODEL:  # by log-odds: the probability is computed for the top k only
            block.lap("top_k")  # what came before (the bought mask, other strategies)
            logits = self.model.logit_blocks(block.scores)
            block.lap("metamodel")
            if self.rules is not None:
                return self.rules.select(logits, bought.nonzero(), self.k, boosted=True)
            return _top_k_unbought(logits, bought, self.k)
        scores = compact(np.asarray(block.scores[strategy], dtype=float))
        if self.rules is not None:
            return self.rules.select(np.array(np.broadcast_to(scores, bought.shape)), bought.nonzero(),
                                     self.k, boosted=False)
        if scores.shape[0] == 1 < len(block.users):  # the same for every user (popularity)
            return _top_k_of_shared_row(scores[0], bought, self.k)
        # on a copy: the block's scores are shared by every strategy
        return _top_k_unbought(np.array(np.broadcast_to(scores, bought.shape)), bought, self.k)


def _top_k_unbought(scores: np.ndarray, bought: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of ``scores`` (changed in place) once what each user bought is -inf;
    returns the columns and their scores."""
    scores[bought.nonzero()] = -np.inf
    cols = top_k(scores, k)
    return cols, scores.reshape(-1)[along_rows(scores, cols)]


def _top_k_of_shared_row(row: np.ndarray, bought: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of a block whose users all have the scores ``row``, except that what
    a user bought is -inf: the row is ranked once, and each user skips what they bought
    among its first ``k`` + (most bought by a user) sales. Returns the columns and scores."""
    most_bought = int(np.diff(bought.indptr).max(initial=0))
    order = top_k(row[None, :], k + most_bought)[0]
    skipped = bought[:, order].toarray() > 0
    keep = np.argsort(skipped, axis=1, kind="stable")[:, :k]  # the first k not bought
    cols = order[keep]
    best = np.where(np.take_along_axis(skipped, keep, axis=1), -np.inf, row[cols])
    return cols, best


def rank_users(context, prototypes, model, users, config, timers: dict | None = None,
               strategies: tuple[str, ...] | None = None, fitted: list | None = None):
    """Each strategy's top-k open sales for ``users`` (RANKING_SCHEMA): the meta-model's and
    each recommender's alone (or only ``strategies``), fitted on ``context`` unless ``fitted``
    is given. ``timers``: see ``score_users``."""
    fitted = fitted or fit_all(prototypes + signals_from_config(config), context)
    strategies = strategies or (METAMODEL, *[r.name for r in prototypes])
    slope = (getattr(model, "calibration_", None) or (1.0, 0.0))[0] if model is not None else 1.0
    rules = Rules.from_config(config["rules"], context.catalog.sales.iloc[context.open_idx], slope)
    return score_users(context, fitted, users, RankTopK(model, config["top_k"], strategies, rules),
                       RANKING_SCHEMA, config["spark"]["scoring_partitions"], timers)


def fallback_lists(context, prototypes, model, config, strategies: tuple[str, ...] | None = None,
                   fitted: list | None = None):
    """Each strategy's top-k for a user with no history (``strategy, rank, sale_id, score``):
    the night's best non-personal ranking, for the users it ranks no list for (new users, and
    users without activity in ``active_lookback_days``). The same path as every user's list,
    for the one id no user has; the meta-model's list is ranked by its non-personal model
    (``MetaModel.fallback_``) when it has one."""
    nobody = context.events.sparkSession.createDataFrame([(FALLBACK_USER,)], "user_id string")
    model = getattr(model, "fallback_", None) or model
    return rank_users(context, prototypes, model, nobody, config, None, strategies, fitted).drop("user_id")
