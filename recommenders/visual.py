"""Visual similarity: open sales that look like what the user visited and bought.

A sale's embedding is the mean of its photos' backbone embeddings (1280-d, each photo scaled
to unit length, the mean too; ``image_labelling.stage.sale_embeddings``). The score of an open
sale is the cosine similarity of its embedding to each sale the user interacted with, summed
with the weights of ``UserHistory.weighted`` (a visit ``visit_weight``, a purchase
``purchase_weight`` more, halved every ``half_life_days``): the nearest-neighbour reading of
"more like these" on the photos alone, computed per block as ``(weights @ E) @ E_open.T``.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pandas as pd

from .base import Recommender, UserHistory

log = logging.getLogger("salerank")


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


APPROXIMATE_PROBES = 32  # cells searched per sale by the approximate search (benchmarks/similar_sales.py)
BLOCK_CELLS = 1 << 24  # similarities held at a time (128 MB of float64): rows per block = this / sales


def similar_open_sales(catalog, open_idx: np.ndarray, n: int = 10, exact_max: int | None = None,
                       seed: int = 0) -> pd.DataFrame:
    """For each open sale with photos, its ``n`` most similar other open sales by the cosine of
    their embeddings, best first, ties by sale_id: ``sale_id, rank, similar_sale_id,
    similarity``. Exact (blocks of the open x open product) up to ``exact_max`` open sales with
    photos (None: always); beyond it :func:`approximate_neighbours` finds the candidates, whose
    cosines are computed exactly."""
    columns = ["sale_id", "rank", "similar_sale_id", "similarity"]
    vectors = catalog.embeddings[open_idx].astype(np.float64)
    has_photo = np.linalg.norm(vectors, axis=1) > 0
    ids = catalog.sale_ids(open_idx)[has_photo]
    vectors = vectors[has_photo]
    if len(ids) < 2:
        return pd.DataFrame(columns=columns)
    k = min(n, len(ids) - 1)
    approximate = exact_max is not None and len(ids) > exact_max
    if approximate and importlib.util.find_spec("faiss") is None:
        log.warning("similar_sales: %d open sales with photos, above image_labelling.similar_sales_exact_max "
                    "(%d), but faiss is not installed (pip install faiss-cpu): searching exactly", len(ids), exact_max)
        approximate = False
    best, similarity = approximate_neighbours(vectors, k, seed) if approximate else exact_neighbours(vectors, k)
    rows = np.repeat(np.arange(len(ids)), best.shape[1])
    return pd.DataFrame({"sale_id": ids[rows], "rank": np.tile(np.arange(1, best.shape[1] + 1), len(ids)),
                         "similar_sale_id": ids[best.ravel()], "similarity": similarity.ravel()})[columns]


def _block_rows(width: int) -> int:
    """Rows per block so that a block of ``width`` numbers per row holds ``BLOCK_CELLS``."""
    return max(1, BLOCK_CELLS // max(1, width))


def _inner_products(vectors: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``rows x k``: each row's inner product with each of its ``neighbours`` (-1: none, -inf),
    a block of rows at a time (never more than ``BLOCK_CELLS`` copied numbers)."""
    out = np.full(neighbours.shape, -np.inf)
    step = _block_rows(vectors.shape[1] * neighbours.shape[1])
    for start in range(0, len(vectors), step):
        rows = slice(start, start + step)
        found = neighbours[rows] >= 0
        others = vectors[np.where(found, neighbours[rows], 0)]  # rows x k x dimensions, bounded
        products = np.einsum("ikd,id->ik", others, vectors[rows])
        out[rows] = np.where(found, products, -np.inf)
    return out


def exact_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by inner product, best first, ties to the lower row,
    and those inner products (``rows x k`` each): a block of rows against all at a time, each
    block ``BLOCK_CELLS`` similarities."""
    return exact_neighbours_of(vectors, np.arange(len(vectors)), k)


def exact_neighbours_of(vectors: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_neighbours` of ``rows`` only."""
    from ..metamodel.ranking import top_k

    found, products = [np.zeros((0, k), np.int64)], [np.zeros((0, k))]
    step = _block_rows(len(vectors))
    for start in range(0, len(rows), step):
        these = rows[start:start + step]
        block = vectors[these] @ vectors.T
        block[np.arange(len(these)), these] = -np.inf  # not itself
        found.append(top_k(block, k))
        products.append(np.take_along_axis(block, found[-1], axis=1))
    return np.concatenate(found), np.concatenate(products)


def approximate_neighbours(vectors: np.ndarray, k: int, seed: int = 0,
                           probes: int = APPROXIMATE_PROBES) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_neighbours`, the rows found by faiss (``pip install faiss-cpu``): an
    inverted file of ``sqrt(n)`` k-means cells (seeded), each row searched in the ``probes``
    cells nearest to it, exact within them (about ``probes * sqrt(n)`` rows per row instead of
    ``n``); ordered by exact inner product, ties to the lower row. The same vectors and seed
    give the same neighbours on one machine (faiss picks its SIMD kernels by CPU, so the last
    bits of a cell's assignment may differ on another)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    cells = max(1, int(np.sqrt(len(x))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(x)
    index.add(x)
    index.nprobe = min(cells, probes)
    _, found = index.search(x, k + 1)
    candidates = np.where(found == np.arange(len(x))[:, None], -1, found)  # not itself
    exact = _inner_products(vectors, candidates)
    order = np.lexsort((candidates, -exact), axis=1)[:, :k]
    best, products = np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)
    short = np.flatnonzero((best < 0).any(axis=1))  # cells too small to hold k others
    if len(short):
        best[short], products[short] = exact_neighbours_of(vectors, short, k)
    return best, products
