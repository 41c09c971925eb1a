"""Active learning: which photos to hand-label next.

Uncertainty sampling weighted by density (Settles & Craven, 2008, "information density"):
a photo is worth labelling when the tagger is unsure about it *and* it resembles many other
unlabelled photos, so that its label teaches the head about a whole region of the pool
rather than about an outlier.  Picking the top scores of a batch wastes labels on
near-duplicates from one confused border, so a batch is made diverse (Zhdanov, 2019): the
best-scored candidates are clustered with k-means and the best of each cluster is taken.
Before any label exists there is no uncertainty to use; then the batch is the most typical
photo of each of ``n`` clusters of the pool (Hacohen et al., 2022, "TypiClust").
"""
from __future__ import annotations

import numpy as np


def uncertainty(probability: np.ndarray) -> np.ndarray:
    """Mean binary entropy (bits) of the independent tag probabilities of each photo."""
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean(axis=1)


def _unit(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def density(embeddings: np.ndarray, reference: int = 2000, seed: int = 0) -> np.ndarray:
    """Mean cosine similarity of each photo to (a sample of at most ``reference``) photos of
    the pool, clipped at 0."""
    unit = _unit(embeddings)
    sample = unit
    if len(unit) > reference:
        sample = unit[np.random.default_rng(seed).choice(len(unit), reference, replace=False)]
    return np.clip(unit @ sample.T, 0, None).mean(axis=1)


def _clusters(unit: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(unit)
    return kmeans.labels_, kmeans.cluster_centers_


def _best_per_cluster(clusters: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The highest-scored row of each cluster, best first (ties: lowest index)."""
    chosen = np.array([max(np.flatnonzero(clusters == c), key=lambda i: (scores[i], -i))
                       for c in np.unique(clusters)])
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def propose(probability: np.ndarray | None, embeddings: np.ndarray, n: int, beta: float = 1.0,
            candidates: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` unlabelled photos most worth labelling, best first, and the
    scores of all.

    Parameters
    ----------
    probability : (photos, tags) array or None
        The tagger's tag probabilities; None when nothing is labelled yet (no tagger).
    embeddings : (photos, d) array
        The backbone's embeddings, which define similarity.
    n : int
        Batch size.
    beta : float
        Weight of density: score = uncertainty * density ** beta.
    candidates : int
        The batch is drawn, one per k-means cluster, from the ``candidates * n`` best
        scores; 1 keeps plain top-n.
    """
    unit = _unit(embeddings)
    n = min(n, len(unit))
    if probability is None:  # cold start: the photo nearest the centre of each region
        clusters, centres = _clusters(unit, n, seed)
        scores = np.einsum("ij,ij->i", unit, centres[clusters])
        return _best_per_cluster(clusters, scores), scores
    scores = uncertainty(probability) * density(embeddings, seed=seed) ** beta
    shortlist = np.argsort(-scores, kind="stable")[:candidates * n]
    if candidates <= 1 or len(shortlist) <= n:
        return shortlist[:n], scores
    clusters, _ = _clusters(unit[shortlist], n, seed)
    return shortlist[_best_per_cluster(clusters, scores[shortlist])], scores
