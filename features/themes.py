"""Themes: NMF compresses the sale x tag matrix of the photos' tags into K themes.

:func:`fit_themes` learns the themes (NMF's components over the tags seen, and their names);
a sale's themes are then the non-negative least-squares weights of its tag vector on those
components (:meth:`ThemeModel.transform`), sale by sale: the same numbers at training and at
night, whatever other sales are transformed with it. Training saves the :class:`ThemeModel`
with the meta-model version as JSON (numbers and names, no pickle); the nightly run
transforms with exactly that, so theme ids and names are the ones the model learnt.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.decomposition import NMF

from ..image_labelling.tagger import attribute_of


@dataclass(frozen=True, eq=False)
class ThemeModel:
    """Fitted themes: ``components`` (themes x tags, >= 0) over the vocabulary ``tags``, and
    each theme's name."""

    tags: tuple[str, ...]
    components: np.ndarray
    names: tuple[str, ...]
    top_tags: int = 5  # tags listed per theme in ``theme_tags``

    @property
    def version(self) -> str:
        """A hash of the vocabulary, the names and the components' bits."""
        digest = hashlib.sha256(json.dumps([list(self.tags), list(self.names), self.top_tags]).encode())
        digest.update(np.ascontiguousarray(self.components, "<f8").tobytes())
        return "themes-" + digest.hexdigest()[:12]

    def to_dict(self) -> dict:
        """JSON-able; :meth:`from_dict` reads it back to the same bits (floats round-trip)."""
        return {"version": self.version, "tags": list(self.tags), "names": list(self.names),
                "top_tags": self.top_tags, "components": self.components.tolist()}

    @classmethod
    def from_dict(cls, described: dict) -> ThemeModel:
        """Raises ValueError unless ``described`` is a consistent :meth:`to_dict`."""
        model = cls(tuple(described["tags"]), np.asarray(described["components"], np.float64),
                    tuple(described["names"]), int(described["top_tags"]))
        if model.components.shape != (len(model.names), len(model.tags)) or (model.components < 0).any():
            raise ValueError(f"themes: components of shape {model.components.shape} for "
                             f"{len(model.names)} themes of {len(model.tags)} tags, or negative")
        if model.version != described["version"]:
            raise ValueError(f"themes: the components read are {model.version}, not {described['version']}")
        return model

    def transform(self, image_tags: pd.DataFrame) -> Themes:
        """The themes of the sales of ``image_tags``; tags outside the vocabulary count 0."""
        return self._project(sale_tag_matrix(image_tags))

    def _project(self, sale_tags: pd.DataFrame) -> Themes:
        basis = self.components.T  # tags x themes
        rows = sale_tags.reindex(columns=list(self.tags), fill_value=0.0).to_numpy(np.float64)
        weights = np.array([nnls(basis, row)[0] for row in rows]).reshape(len(rows), len(self.names))
        return Themes(pd.DataFrame(weights, index=sale_tags.index, columns=list(self.names)),
                      self.theme_tags(), self, sale_attributes(sale_tags))

    def theme_tags(self) -> pd.DataFrame:
        """``theme, rank, tag, weight``: each theme's ``top_tags`` strongest tags."""
        rows = []
        for name, loading in zip(self.names, self.components):
            best = np.argsort(-loading, kind="stable")[:self.top_tags]
            rows += [(name, rank + 1, self.tags[j], float(loading[j])) for rank, j in enumerate(best)]
        return pd.DataFrame(rows, columns=["theme", "rank", "tag", "weight"])


@dataclass
class Themes:
    sale_themes: pd.DataFrame  # index sale_id, one column per theme (weights >= 0)
    theme_tags: pd.DataFrame  # theme, rank, tag, weight: each theme's top tags
    model: ThemeModel
    sale_attributes: pd.DataFrame  # index sale_id, one column per attribute: its predicted value

    @property
    def names(self) -> list[str]:
        return list(self.sale_themes.columns)


def sale_tag_matrix(image_tags: pd.DataFrame) -> pd.DataFrame:
    """Sales x tags (sorted): the mean over a sale's photos of each tag's probability (tags
    outside a photo's top-k count 0)."""
    per_image = image_tags.pivot_table(index=["sale_id", "image_path"], columns="tag",
                                       values="probability", aggfunc="sum", fill_value=0.0)
    sale_tags = per_image.groupby(level="sale_id").mean().sort_index()
    return sale_tags.reindex(sorted(sale_tags.columns), axis=1)


def sale_attributes(sale_tags: pd.DataFrame) -> pd.DataFrame:
    """Sales x attributes: for each attribute of the tags (``attribute=value``, a tagger trained
    on catalogue attributes), the sale's most probable value (None where no photo of the sale
    has one); no columns for a tagger without attributes. Depends only on the sale's own tags."""
    attributes = sorted({a for a in map(attribute_of, sale_tags.columns) if a})
    out = pd.DataFrame(index=sale_tags.index)
    for attribute in attributes:
        columns = [t for t in sale_tags.columns if attribute_of(t) == attribute]
        scores = sale_tags[columns].to_numpy()
        values = np.array([c.split("=", 1)[1] for c in columns], dtype=object)[scores.argmax(axis=1)]
        out[attribute] = pd.Series(values, index=sale_tags.index).where(scores.max(axis=1) > 0, None)
    return out


def fit_themes(image_tags: pd.DataFrame, n_themes: int, seed: int, top_tags: int = 5) -> Themes:
    """Fit K themes on ``image_tags`` (``sale_id, image_path, tag, probability``).

    NMF factors the sale x tag matrix (:func:`sale_tag_matrix`); each theme is named by its
    strongest tags (up to three, each at least 30 % of the strongest); the sales' themes are
    then :meth:`ThemeModel.transform`'s, as at night.
    """
    sale_tags = sale_tag_matrix(image_tags)
    k = max(1, min(n_themes, *sale_tags.shape))
    nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=500).fit(sale_tags.to_numpy())
    tags = np.array(sale_tags.columns)
    names = []
    for theme, loading in enumerate(nmf.components_):
        best = np.argsort(-loading, kind="stable")[:3]
        strong = [j for j in best if loading[j] >= 0.3 * loading[best[0]]]
        names.append(f"t{theme:02d}:" + "+".join(tags[strong]))
    model = ThemeModel(tuple(str(t) for t in tags), np.asarray(nmf.components_, np.float64), tuple(names), top_tags)
    return model._project(sale_tags)


def theme_table(themes: Themes, sale_photos: pd.Series, examples: int = 3) -> pd.DataFrame:
    """One row per theme: its top tags and the photos (``sale_photos``: sale_id -> one
    image_path) of the ``examples`` sales that carry it most."""
    table = themes.theme_tags.groupby("theme", sort=False)["tag"].apply(list).to_frame("top_tags")
    table["example_images"] = [
        sale_photos.reindex(themes.sale_themes[t].nlargest(examples).index).dropna().tolist()
        for t in table.index]
    return table
