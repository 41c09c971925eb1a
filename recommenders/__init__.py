"""Recommenders: each scores blocks of users against the sales open on a day."""
import copy

from .base import Recommender, UserHistory
from .content import ContentBased
from .item_cf import ItemCF
from .popularity import Popularity


def from_config(config: dict) -> list[Recommender]:
    """The recommenders the meta-model combines, configured from ``config['recommenders']``."""
    settings = config["recommenders"]
    return [Popularity(**settings["popularity"]), ItemCF(**settings["item_cf"]),
            ContentBased(**settings["content"])]


def fit_all(recommenders: list[Recommender], context) -> list[Recommender]:
    """Fresh copies of ``recommenders``, fitted on ``context`` (prototypes stay unfitted)."""
    return [copy.deepcopy(r).fit(context) for r in recommenders]


__all__ = ["Recommender", "UserHistory", "Popularity", "ItemCF", "ContentBased", "from_config",
           "fit_all"]
