"""Image-theme affinity: user theme profile . sale theme vector.

A sale's theme vector comes from its photos (NMF over the tagger's tags), so a sale scores
on its very first day, before anyone has visited it.  A user's profile is the weighted mean
of the theme vectors of the sales they visited (``visit_weight``) and bought (plus
``purchase_weight``), each interaction's weight halved every ``half_life_days`` (tastes
drift; None turns the decay off).
"""
from __future__ import annotations

import numpy as np

from .base import Recommender, UserHistory


class ImageThemes(Recommender):
    name = "image_themes"

    def __init__(self, visit_weight: float = 1.0, purchase_weight: float = 3.0,
                 half_life_days: float | None = 30.0):
        self.visit_weight = visit_weight
        self.purchase_weight = purchase_weight
        self.half_life_days = half_life_days

    def fit(self, context) -> ImageThemes:
        themes = context.catalog.themes
        if themes is None:
            raise ValueError("the catalogue has no image themes: run the image stage first")
        norms = themes.sum(axis=1, keepdims=True)
        # each sale's themes as shares, so that sales with many photos do not weigh more
        self.themes_ = np.divide(themes, norms, out=np.zeros_like(themes), where=norms > 0)
        self.open_themes_ = self.themes_[context.open_idx].T
        return self

    def profiles(self, history: UserHistory) -> np.ndarray:
        """Each user's theme profile (users x themes, rows summing to 1, or 0 without history)."""
        weights = history.weighted(self.visit_weight, self.purchase_weight, self.half_life_days)
        profile = np.asarray(weights @ self.themes_)
        totals = profile.sum(axis=1, keepdims=True)
        return np.divide(profile, totals, out=np.zeros_like(profile), where=totals > 0)

    def score(self, history: UserHistory) -> np.ndarray:
        return self.profiles(history) @ self.open_themes_
