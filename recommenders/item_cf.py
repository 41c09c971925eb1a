"""Item-item collaborative filtering on co-visitation.

``score(u, j) = sum over sales i that u visited or bought of sim(i, j)``, with the cosine
similarity of the sets of users who interacted with ``i`` and ``j`` before the day.  Only
the columns of the open sales are needed, each keeping its ``neighbours`` most similar
sales: a sparse ``catalogue x open`` matrix, so a block of users scores as one sparse
product.
"""
from __future__ import annotations

import numpy as np
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
    """

    name = "item_cf"

    def __init__(self, max_user_history: int = 200, neighbours: int = 100):
        self.max_user_history = max_user_history
        self.neighbours = neighbours

    def fit(self, context) -> ItemCF:
        recent = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("sale_idx"))
        pairs = (context.interactions()
                 .withColumn("n", F.row_number().over(recent))
                 .filter(F.col("n") <= self.max_user_history)
                 .select("user_id", "sale_idx")).cache()
        item_users = pairs.groupBy("sale_idx").agg(F.count(F.lit(1)).alias("users"))
        open_pairs = (pairs.filter(F.col("sale_idx").isin([int(i) for i in context.open_idx]))
                      .withColumnRenamed("sale_idx", "j"))
        best = Window.partitionBy("j").orderBy(F.col("sim").desc(), F.col("i"))
        similar = (pairs.withColumnRenamed("sale_idx", "i").join(open_pairs, "user_id")
                   .filter(F.col("i") != F.col("j"))
                   .groupBy("i", "j").agg(F.count(F.lit(1)).alias("both"))
                   .join(item_users.withColumnRenamed("sale_idx", "i").withColumnRenamed("users", "n_i"), "i")
                   .join(item_users.withColumnRenamed("sale_idx", "j").withColumnRenamed("users", "n_j"), "j")
                   .withColumn("sim", F.col("both") / F.sqrt(F.col("n_i") * F.col("n_j")))
                   .withColumn("rank", F.row_number().over(best))
                   .filter(F.col("rank") <= self.neighbours)
                   .select("i", "j", "sim").toPandas())
        pairs.unpersist()
        columns = np.searchsorted(context.open_idx, similar["j"].to_numpy())
        self.similarity_ = sp.csr_matrix(
            (similar["sim"].to_numpy(), (similar["i"].to_numpy(), columns)),
            shape=(len(context.catalog), len(context.open_idx)))
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        return (history.seen @ self.similarity_).toarray()
