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


# the recommenders of the users' histories, in the order the meta-model's features take
HISTORY_RECOMMENDERS = {r.name: r for r in (Popularity, ItemCF, ContentBased, ALS, BPR)}


def from_config(config: dict, with_images: bool = False) -> list[Recommender]:
    """The recommenders the meta-model combines, configured from ``config['recommenders']``:
    those of ``recommenders.enabled`` (in :data:`HISTORY_RECOMMENDERS`' order), image themes
    when the catalogue has them, and visual similarity when it also has the photos' embeddings
    (``image_labelling.visual_similarity``)."""
    settings = config["recommenders"]
    factorised = {"seed": config["seed"], "max_users": config["fit"]["max_users"]}
    chosen = [kind(**settings[name], **(factorised if kind in (ALS, BPR) else {}))
              for name, kind in HISTORY_RECOMMENDERS.items() if name in settings["enabled"]]
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
           "VisualSimilarity", "HISTORY_RECOMMENDERS", "from_config", "fit_all"]
