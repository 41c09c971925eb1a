"""Content-based scoring: user profile . sale profile over sale metadata.

A sale's profile is one-hot over its feature values (``destination=Crete``,
``category=villa``, ``price_band=2`` and, when the catalogue has image themes,
``theme=7``: the sale's dominant theme).  A tagger trained on catalogue attributes named after
these columns (tags ``destination=...``, ``category=...``) fills a sale's missing destination or
category with the value predicted from its photos, so a sale with only a photo is matched on
the same groups as one with metadata; its other attributes (colour, pattern) reach content-based
only through the themes.  A user's profile is the weighted sum of the profiles of the sales
they visited (weight ``visit_weight``) and bought (plus ``purchase_weight``), normalised within
each feature group, so the score of a sale is the sum over groups of the share of the user's
history that matches it (0 to #groups).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .base import Recommender, UserHistory

FEATURE_COLUMNS = ("destination", "category")


def price_bands(prices: pd.Series, reference: pd.Series, n_bands: int) -> pd.Series:
    """Band of each price (0..n_bands-1) by the quantiles of ``reference`` prices."""
    edges = np.unique(np.nanquantile(reference.to_numpy(dtype=float),
                                     np.linspace(0, 1, n_bands + 1)[1:-1]))
    bands = pd.Series(np.searchsorted(edges, prices.to_numpy(dtype=float), side="right"),
                      index=prices.index).astype("object")
    return bands.where(prices.notna(), None)


def _known_or_predicted(sales: pd.DataFrame, attributes: pd.DataFrame | None, column: str) -> pd.Series:
    """The sales' ``column``, its missing values filled with those predicted from the photos."""
    known = sales[column] if column in sales.columns else pd.Series(None, index=sales.index, dtype=object)
    if attributes is None or column not in attributes.columns:
        return known
    return known.where(known.notna(), attributes[column].set_axis(sales.index))


class ContentBased(Recommender):
    name = "content"

    def __init__(self, price_bands: int = 5, visit_weight: float = 1.0, purchase_weight: float = 3.0):
        self.price_bands = price_bands
        self.visit_weight = visit_weight
        self.purchase_weight = purchase_weight

    def fit(self, context) -> ContentBased:
        sales = context.catalog.sales
        attributes = context.catalog.attributes
        values = {c: _known_or_predicted(sales, attributes, c) for c in FEATURE_COLUMNS
                  if c in sales.columns or (attributes is not None and c in attributes.columns)}
        if "price" in sales.columns:
            known = sales.loc[sales["open_date"] <= context.as_of, "price"].dropna()
            if len(known):
                values["price_band"] = price_bands(sales["price"], known, self.price_bands)
        themes = context.catalog.themes
        if themes is not None:  # photos are sale metadata: known before the sale opens
            dominant = pd.Series(themes.argmax(axis=1), index=sales.index).astype("object")
            values["theme"] = dominant.where(themes.sum(axis=1) > 0, None)
        rows, cols, groups, names = [], [], [], []
        for group, (column, series) in enumerate(values.items()):
            for value in sorted(series.dropna().unique(), key=str):
                matches = np.flatnonzero((series == value).to_numpy())
                rows.append(matches)
                cols.append(np.full(len(matches), len(names)))
                groups.append(group)
                names.append(f"{column}={value}")
        n_features = len(names)
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
        cols = np.concatenate(cols) if cols else np.zeros(0, dtype=int)
        self.feature_names_ = names
        self.profiles_ = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sales), n_features))
        # feature -> group indicator, to normalise a user's profile within each group
        self.groups_ = sp.csr_matrix((np.ones(n_features), (np.arange(n_features), groups)),
                                     shape=(n_features, len(values)))
        self.open_profiles_ = self.profiles_[context.open_idx].T.toarray()
        return self

    def score(self, history: UserHistory) -> np.ndarray:
        weights = history.weighted(self.visit_weight, self.purchase_weight)
        profile = np.asarray((weights @ self.profiles_).todense())
        totals = np.asarray((sp.csr_matrix(profile) @ self.groups_).todense())
        group_of = self.groups_.indices  # one group per feature, in feature order
        shares = np.divide(profile, totals[:, group_of], out=np.zeros_like(profile),
                           where=totals[:, group_of] > 0)
        # sparse x dense sums each user's row on its own: the same bits whatever the block
        return np.asarray(sp.csr_matrix(shares) @ self.open_profiles_)
