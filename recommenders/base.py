"""The interface every recommender honours.

A recommender is fitted on a :class:`~salerank.features.history.ScoringContext` (what is
known at the start of a day) and learns *sale-side* state: small, because few sales are
open on a day, and broadcast to every worker.  State learned per user (BPR's user factors)
is never broadcast: it is joined to the users' histories, so a worker holds only the
users of its partition (:meth:`Recommender.user_state`).  It then scores blocks of users against
the open sales with vectorised numpy/scipy: :meth:`Recommender.score` takes the users'
histories as sparse matrices and returns a dense ``users x open sales`` block.  No
(user, sale) pair ever goes through a shuffle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ..features.history import ScoringContext


@dataclass(frozen=True)
class UserHistory:
    """The histories of a block of users, as ``users x catalogue`` 0/1 CSR matrices."""

    seen: sp.csr_matrix  # visited or bought before the day
    bought: sp.csr_matrix  # bought before the day
    age_days: np.ndarray | None = None  # days since the last interaction, aligned with seen.data
    visits: np.ndarray | None = None  # times the user visited the sale, aligned with seen.data
    visit_age_days: np.ndarray | None = None  # days since the last visit (NaN: never), likewise
    # per-user state joined to these users, by recommender name (see Recommender.user_state)
    states: dict[str, np.ndarray] = field(default_factory=dict)

    def weighted(self, visit_weight: float, purchase_weight: float,
                 half_life_days: float | None = None) -> sp.csr_matrix:
        """Each interaction weighted ``visit_weight`` (+ ``purchase_weight`` if bought), times
        ``0.5 ** (age / half_life_days)`` when a half-life is given."""
        decay = self.seen
        if half_life_days and self.age_days is not None:
            decay = self.seen.copy()
            decay.data = 0.5 ** (self.age_days / half_life_days)
        return visit_weight * decay + purchase_weight * self.bought.multiply(decay)

    @classmethod
    def from_lists(cls, items: list[np.ndarray], bought: list[np.ndarray], n_sales: int,
                   age_days: list[np.ndarray] | None = None,
                   states: dict[str, np.ndarray] | None = None) -> UserHistory:
        """From one array per user (each user's sale indices, bought flags and ages)."""
        return cls.from_arrow(pa.array(items, pa.list_(pa.int32())), pa.array(bought, pa.list_(pa.bool_())),
                              n_sales, None if age_days is None else pa.array(age_days, pa.list_(pa.float64())),
                              states)

    @classmethod
    def from_arrow(cls, items: pa.ListArray, bought: pa.ListArray, n_sales: int,
                   age_days: pa.ListArray | None = None,
                   states: dict[str, np.ndarray] | None = None,
                   visits: pa.ListArray | None = None, visit_age_days: pa.ListArray | None = None) -> UserHistory:
        """From aligned Arrow list columns (a slice of the batch Spark hands a worker): their
        offsets are the CSR row pointers, so no Python object is made per user."""
        offsets = items.offsets.to_numpy()
        indptr = (offsets - offsets[0]).astype(np.int64)
        indices = items.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
        flags = bought.flatten().to_numpy(zero_copy_only=False).astype(float)
        shape = (len(items), n_sales)
        seen = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=shape)
        # its own copies of indices/indptr: eliminate_zeros works in place
        bought_m = sp.csr_matrix((flags, indices.copy(), indptr.copy()), shape=shape)
        bought_m.eliminate_zeros()
        def values(column: pa.ListArray | None) -> np.ndarray | None:
            return None if column is None else column.flatten().to_numpy(zero_copy_only=False).astype(float)

        return cls(seen, bought_m, values(age_days), states=states or {}, visits=values(visits),
                   visit_age_days=values(visit_age_days))

    def of_open_sales(self, values: np.ndarray | None, open_idx: np.ndarray, missing: float) -> np.ndarray:
        """``values`` (aligned with ``seen.data``) as a dense ``users x open sales`` block,
        ``missing`` where the user has no interaction with the sale (or no value)."""
        block = np.full((len(self), len(open_idx)), missing)
        if values is None or not len(values):
            return block
        column = np.full(self.seen.shape[1], -1)
        column[open_idx] = np.arange(len(open_idx))
        rows = np.repeat(np.arange(len(self)), np.diff(self.seen.indptr))
        cols = column[self.seen.indices]
        keep = (cols >= 0) & ~np.isnan(values)
        block[rows[keep], cols[keep]] = values[keep]
        return block

    def __len__(self) -> int:
        return self.seen.shape[0]


class Recommender(ABC):
    """Scores users against the sales open on the context's day.

    Hyperparameters go to the constructor; :meth:`fit` sets attributes ending in ``_``.
    """

    name: str = "recommender"
    personal: bool = True  # scores depend on the user's history (False: the same for everyone)

    @abstractmethod
    def fit(self, context: ScoringContext) -> Recommender:
        """Learn sale-side state from what is known at the start of ``context.as_of``."""

    @abstractmethod
    def score(self, history: UserHistory) -> np.ndarray:
        """Scores of shape ``(len(history), len(context.open_idx))``; higher is better."""

    def user_state(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Learned per-user state as ``(user_ids, users x width float32 array)``, or None.

        Scoring joins each user's row to their history as ``history.states[self.name]``
        (zeros for a user without one) instead of broadcasting it, so a recommender that
        has some must leave it out of what is pickled.
        """
        return None


class SameForEveryUser(Recommender):
    """Scores of the open sales alone: ``fit`` sets ``values_`` (one per open sale), and every
    user's row is that row (broadcast, not copied: ranked and transformed once per block)."""

    personal = False
    values_: np.ndarray

    def score(self, history: UserHistory) -> np.ndarray:
        return np.broadcast_to(self.values_, (len(history), len(self.values_)))
