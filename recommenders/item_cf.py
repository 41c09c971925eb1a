"""Item-item collaborative filtering on co-visitation.

``score(u, j) = sum over sales i that u visited or bought of w(u, i) sim(i, j)``, where
``sim`` compares the sets of users who interacted with ``i`` and ``j`` before the day
(``U_i``, ``U_j``):

- ``cosine``: ``|U_i & U_j| / sqrt(|U_i| |U_j|)``;
- ``jaccard``: ``|U_i & U_j| / |U_i | U_j|``;
- ``asymmetric``: ``|U_i & U_j| / (|U_i| ** alpha * |U_j| ** (1 - alpha))`` (Aiolli, 2013):
  with ``alpha`` above 0.5 a popular past sale ``i`` counts for less, below 0.5 a popular
  candidate ``j`` is favoured; 0.5 is the cosine.

``w(u, i)`` is 1, or ``0.5 ** (age / half_life_days)`` with time decay.  Only the columns of
the open sales are needed, each keeping its ``neighbours`` most similar sales: a sparse
``catalogue x open`` matrix, so a block of users scores as one sparse product. Where a few
popular sales are in everyone's history and among every open sale's neighbours, that product
is dense, and a sparse product costs about ten times more per multiply-add than adding dense
rows (``benchmarks/item_cf_density.py``): such a block adds the similarity's rows as a dense
array instead, the same sums in another order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.sql import Window
from pyspark.sql import functions as F

from .base import Recommender, UserHistory


class ItemCF(Recommender):
    """Item-item CF.

    Parameters
    ----------
    max_user_history : int
        Most recent sales per user that count towards co-visitation; caps the
        quadratic cost of very heavy users.
    neighbours : int
        Most similar past sales kept for each open sale.
    similarity : {"cosine", "jaccard", "asymmetric"}
    alpha : float
        Exponent of the asymmetric cosine.
    half_life_days : float or None
        Time decay of the user's past interactions; None: none.
    """

    name = "item_cf"
    SIMILARITIES = ("cosine", "jaccard", "asymmetric")
    # dense rows once the sparse product's multiply-adds exceed 1/10 of theirs (measured
    # crossover 12-15), and only while those rows stay small enough for a worker (64 MB)
    DENSE_FROM = 10
    MAX_DENSE_CELLS = 2**23

    def __init__(self, max_user_history: int = 200, neighbours: int = 100, similarity: str = "cosine",
                 alpha: float = 0.5, half_life_days: float | None = None):
        if similarity not in self.SIMILARITIES:
            raise ValueError(f"item_cf.similarity must be one of {self.SIMILARITIES}, not {similarity!r}")
        self.max_user_history = max_user_history
        self.neighbours = neighbours
        self.similarity = similarity
        self.alpha = alpha
        self.half_life_days = half_life_days

    def _similarity(self):
        both, n_i, n_j = F.col("both"), F.col("n_i"), F.col("n_j")
        if self.similarity == "jaccard":
            return both / (n_i + n_j - both)
        alpha = 0.5 if self.similarity == "cosine" else self.alpha
        return both / (F.pow(n_i, F.lit(alpha)) * F.pow(n_j, F.lit(1 - alpha)))

    def fit(self, context) -> ItemCF:
        recent = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("sale_idx"))
        pairs = (context.interactions()
                 .withColumn("n", F.row_number().over(recent))
                 .filter(F.col("n") <= self.max_user_history)
                 .select("user_id", "sale_idx")).cache()
        try:
            similar = self._neighbours(pairs, context.open_idx)
        finally:
            pairs.unpersist()
        columns = np.searchsorted(context.open_idx, similar["j"].to_numpy())
        self.similarity_ = sp.csr_matrix(
            (similar["sim"].to_numpy(), (similar["i"].to_numpy(), columns)),
            shape=(len(context.catalog), len(context.open_idx)))
        self._dense = None  # the dense rows of a former fit
        return self

    def _neighbours(self, pairs, open_idx) -> pd.DataFrame:
        """``i, j, sim``: the most similar past sales ``i`` of each open sale ``j``."""
        item_users = pairs.groupBy("sale_idx").agg(F.count(F.lit(1)).alias("users"))
        open_pairs = (pairs.filter(F.col("sale_idx").isin([int(i) for i in open_idx]))
                      .withColumnRenamed("sale_idx", "j"))
        best = Window.partitionBy("j").orderBy(F.col("sim").desc(), F.col("i"))
        return (pairs.withColumnRenamed("sale_idx", "i").join(open_pairs, "user_id")
                .filter(F.col("i") != F.col("j"))
                .groupBy("i", "j").agg(F.count(F.lit(1)).alias("both"))
                .join(item_users.withColumnRenamed("sale_idx", "i").withColumnRenamed("users", "n_i"), "i")
                .join(item_users.withColumnRenamed("sale_idx", "j").withColumnRenamed("users", "n_j"), "j")
                .withColumn("sim", self._similarity())
                .withColumn("rank", F.row_number().over(best))
                .filter(F.col("rank") <= self.neighbours)
                .select("i", "j", "sim").toPandas())

    def score(self, history: UserHistory) -> np.ndarray:
        weights = history.weighted(1.0, 0.0, self.half_life_days)
        if self.dense_pays(weights):
            rows, similarity = self._dense_rows()
            return weights[:, rows] @ similarity
        return (weights @ self.similarity_).toarray()

    def dense_pays(self, weights: sp.csr_matrix) -> bool:
        """Whether this block's product is cheaper with the similarity's rows dense: the
        sparse product's multiply-adds (each history entry times its sale's neighbours)
        against the dense one's (each history entry times every open sale)."""
        per_row = np.diff(self.similarity_.indptr)
        used = np.count_nonzero(per_row)
        if not weights.nnz or used * self.similarity_.shape[1] > self.MAX_DENSE_CELLS:
            return False
        return bool(weights.nnz * self.similarity_.shape[1] < self.DENSE_FROM * per_row[weights.indices].sum())

    def _dense_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The past sales that are some open sale's neighbour, and their similarity rows as a
        dense array; made once per worker, on the first block that needs it."""
        if getattr(self, "_dense", None) is None:
            rows = np.flatnonzero(np.diff(self.similarity_.indptr))
            self._dense = rows, self.similarity_[rows].toarray()
        return self._dense

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key != "_dense"}  # workers make their own
