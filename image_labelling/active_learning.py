"""Active learning: which photos to hand-label next.

Uncertainty sampling weighted by density (Settles & Craven, 2008, "information density"):
a photo is worth labelling when the tagger is unsure about it *and* it resembles many other
unlabelled photos, so that its label teaches the head about a whole region of the pool
rather than about an outlier.
"""
from __future__ import annotations

import numpy as np


def uncertainty(probability: np.ndarray) -> np.ndarray:
    """Mean binary entropy (bits) of the independent tag probabilities of each photo."""
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean(axis=1)


def density(embeddings: np.ndarray, reference: int = 2000, seed: int = 0) -> np.ndarray:
    """Mean cosine similarity of each photo to (a sample of at most ``reference``) photos of
    the pool, clipped at 0."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sample = unit
    if len(unit) > reference:
        sample = unit[np.random.default_rng(seed).choice(len(unit), reference, replace=False)]
    return np.clip(unit @ sample.T, 0, None).mean(axis=1)


def propose(probability: np.ndarray, embeddings: np.ndarray, n: int, beta: float = 1.0,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` unlabelled photos most worth labelling, best first, and the
    scores of all (``uncertainty * density ** beta``)."""
    scores = uncertainty(probability) * density(embeddings, seed=seed) ** beta
    return np.argsort(-scores, kind="stable")[:n], scores
