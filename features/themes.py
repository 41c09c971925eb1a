"""Themes: NMF compresses the sale x tag matrix of the photos' tags into K themes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.decomposition import NMF


@dataclass
class Themes:
    sale_themes: pd.DataFrame  # index sale_id, one column per theme (weights >= 0)
    theme_tags: pd.DataFrame  # theme, rank, tag, weight: each theme's top tags
    model: NMF

    @property
    def names(self) -> list[str]:
        return list(self.sale_themes.columns)


def fit_themes(image_tags: pd.DataFrame, n_themes: int, seed: int, top_tags: int = 5) -> Themes:
    """Fit K themes on ``image_tags`` (``sale_id, image_path, tag, probability``).

    A sale's tag vector is the mean over its photos of each tag's probability (tags outside
    a photo's top-k count 0); NMF factors the sale x tag matrix; each theme is named by its
    strongest tags (up to three, each at least 30 % of the strongest).
    """
    per_image = image_tags.pivot_table(index=["sale_id", "image_path"], columns="tag",
                                       values="probability", aggfunc="sum", fill_value=0.0)
    sale_tags = per_image.groupby(level="sale_id").mean().sort_index()
    sale_tags = sale_tags.reindex(sorted(sale_tags.columns), axis=1)
    k = max(1, min(n_themes, *sale_tags.shape))
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=500)
    weights = model.fit_transform(sale_tags.to_numpy())
    tags = np.array(sale_tags.columns)
    rows, names = [], []
    for theme, loading in enumerate(model.components_):
        best = np.argsort(-loading, kind="stable")[:top_tags]
        strong = [j for j in best[:3] if loading[j] >= 0.3 * loading[best[0]]]
        names.append(f"t{theme:02d}:" + "+".join(tags[strong]))
        rows += [(names[-1], rank + 1, tags[j], float(loading[j])) for rank, j in enumerate(best)]
    sale_themes = pd.DataFrame(weights, index=sale_tags.index, columns=names)
    theme_tags = pd.DataFrame(rows, columns=["theme", "rank", "tag", "weight"])
    return Themes(sale_themes, theme_tags, model)


def theme_table(themes: Themes, sale_photos: pd.Series, examples: int = 3) -> pd.DataFrame:
    """One row per theme: its top tags and the photos (``sale_photos``: sale_id -> one
    image_path) of the ``examples`` sales that carry it most."""
    table = themes.theme_tags.groupby("theme", sort=False)["tag"].apply(list).to_frame("top_tags")
    table["example_images"] = [
        sale_photos.reindex(themes.sale_themes[t].nlargest(examples).index).dropna().tolist()
        for t in table.index]
    return table
