"""Visual similarity: open sales that look like what the user visited and bought.

A sale's embedding is the mean of its photos' backbone embeddings (1280-d, each photo scaled
to unit length, the mean too; ``image_labelling.stage.sale_embeddings``). The score of an open
sale is the cosine similarity of its embedding to each sale the user interacted with, summed
with the weights of ``UserHistory.weighted`` (a visit ``visit_weight``, a purchase
``purchase_weight`` more, halved every ``half_life_days``): the nearest-neighbour reading of
"more like these" on the photos alone, computed per block as ``(weights @ E) @ E_open.T``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .base import Recommender, UserHistory


class VisualSimilarity(Recommender):
    name = "visual"

    def __init__(self, visit_weight: float = 1.0, purchase_weight: float = 3.0,
                 half_life_days: float | None = 30.0):
        self.visit_weight = visit_weight
        self.purchase_weight = purchase_weight
        self.half_life_days = half_life_days

    def fit(self, context) -> VisualSimilarity:
        embeddings = context.catalog.embeddings
        if embeddings is None:
            raise ValueError("the catalogue has no photo embeddings: run the image stage with "
                             "image_labelling.visual_similarity: true")
        self.embeddings_ = np.asarray(embeddings, dtype=np.float32)
        self.open_embeddings_ = np.ascontiguousarray(self.embeddings_[context.open_idx].T)
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        weights = history.weighted(self.visit_weight, self.purchase_weight, self.half_life_days)
        profile = np.asarray(weights @ self.embeddings_, dtype=np.float32)
        return (profile @ self.open_embeddings_).astype(np.float64)


def similar_open_sales(catalog, open_idx: np.ndarray, n: int = 10) -> pd.DataFrame:
    """For each open sale with photos, its ``n`` most similar other open sales by the cosine of
    their embeddings (exact: one open x open product), best first, ties by sale_id:
    ``sale_id, rank, similar_sale_id, similarity``."""
    from ..metamodel.ranking import top_k

    columns = ["sale_id", "rank", "similar_sale_id", "similarity"]
    vectors = catalog.embeddings[open_idx].astype(np.float64)
    has_photo = np.linalg.norm(vectors, axis=1) > 0
    ids = catalog.sale_ids(open_idx)[has_photo]
    vectors = vectors[has_photo]
    if len(ids) < 2:
        return pd.DataFrame(columns=columns)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)  # not itself
    best = top_k(similarity, min(n, len(ids) - 1))
    rows = np.repeat(np.arange(len(ids)), best.shape[1])
    return pd.DataFrame({"sale_id": ids[rows], "rank": np.tile(np.arange(1, best.shape[1] + 1), len(ids)),
                         "similar_sale_id": ids[best.ravel()],
                         "similarity": similarity[rows, best.ravel()]})[columns]
