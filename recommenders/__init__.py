"""Recommenders: each scores blocks of users against the sales open on a day."""
import copy
import time

from .base import Recommender, UserHistory
from .content import ContentBased
from .image_themes import ImageThemes
from .item_cf import ItemCF
from .matrix_factorisation import ALS, BPR
from .popularity import Popularity
from .visual import VisualSimilarity


def from_config(config: dict, with_images: bool = False) -> list[Recommender]:
    """The recommenders the meta-model combines, configured from ``config['recommenders']``;
    image themes only when the catalogue has them, and visual similarity when it also has the
    photos' embeddings (``image_labelling.visual_similarity``)."""
    settings = config["recommenders"]
    chosen = [Popularity(**settings["popularity"]), ItemCF(**settings["item_cf"]),
              ContentBased(**settings["content"]), ALS(**settings["als"], seed=config["seed"]),
              BPR(**settings["bpr"], seed=config["seed"])]
    if with_images:
        chosen.append(ImageThemes(**settings["image_themes"]))
        if config["image_labelling"]["visual_similarity"]:
            chosen.append(VisualSimilarity(**settings["visual"]))
    return chosen


def fit_all(recommenders: list[Recommender], context, seconds: dict | None = None) -> list[Recommender]:
    """Fresh copies of ``recommenders``, fitted on ``context`` (prototypes stay unfitted);
    each fit's wall time in ``seconds`` when given."""
    fitted = []
    for r in recommenders:
        start = time.perf_counter()
        fitted.append(copy.deepcopy(r).fit(context))
        if seconds is not None:
            seconds[r.name] = round(time.perf_counter() - start, 3)
    return fitted


__all__ = ["Recommender", "UserHistory", "Popularity", "ItemCF", "ContentBased", "ImageThemes", "ALS", "BPR",
           "VisualSimilarity", "from_config", "fit_all"]
