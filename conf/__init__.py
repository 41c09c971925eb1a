"""Configuration: ``default.yaml`` with an optional user file merged over it."""
from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration file that cannot be used."""


def default_config() -> dict:
    text = resources.files(__package__).joinpath("default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                read_text: Callable[[str], str | None] | None = None) -> dict:
    """Return the default configuration merged with ``path`` and then ``overrides``.

    ``read_text`` reads the file at ``path`` (None when there is none); by default a local file.

    Raises
    ------
    ConfigError
        When the file is missing or not YAML, names a key the defaults do not have, or gives a
        value that cannot work (a size below 1, an empty grid, an unknown similarity, signal or
        backbone, validation days that leave none to fit on): every such mistake, by key.
    """
    config = default_config()
    if path is not None:
        text = (read_text or _read_local)(str(path))
        if text is None:
            raise ConfigError(f"configuration file not found: {path}")
        try:
            user = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        config = _merge(config, user, source=str(path))
    if overrides:
        config = _merge(config, overrides, source="overrides")
    _validate(config, str(path or "configuration"))
    return config


# settings that must be whole numbers of at least 1 (or, for the second set, at least 0)
_POSITIVE = ("top_k", "active_lookback_days", "spark.shuffle_partitions", "spark.scoring_partitions",
             "recommenders.popularity.window_days", "recommenders.item_cf.max_user_history",
             "recommenders.item_cf.neighbours", "recommenders.content.price_bands",
             "recommenders.als.factors", "recommenders.als.iterations", "recommenders.bpr.factors",
             "recommenders.bpr.iterations", "recommenders.bpr.threads", "image_labelling.top_k",
             "image_labelling.themes", "metamodel.train_days", "metamodel.validation_days",
             "metamodel.negatives_per_purchase", "metamodel.calibration_pairs")
_NON_NEGATIVE = ("report.sample_users",)
_NULL_OR_NON_NEGATIVE = ("max_data_lag_days",)
_NULL_OR_POSITIVE = ("metamodel.rank_depth", "rules.max_per_destination", "rules.max_per_category",
                     "image_labelling.similar_sales_exact_max", "fit.max_users")


def _setting(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _validate(config: dict, source: str) -> None:
    """Every mistake in the values, each named with its key, in one ConfigError."""
    problems = []
    for keys, least, nullable in ((_POSITIVE, 1, False), (_NON_NEGATIVE, 0, False),
                                  (_NULL_OR_NON_NEGATIVE, 0, True), (_NULL_OR_POSITIVE, 1, True)):
        for key in keys:
            value = _setting(config, key)
            if not (_whole(value, least) or (nullable and value is None)):
                problems.append(f"{key} must be {'null or ' if nullable else ''}a whole number of at "
                                f"least {least}, got {value!r}")
    settings = config["metamodel"]
    if _whole(settings["train_days"], 1) and _whole(settings["validation_days"], 1) \
            and settings["validation_days"] >= settings["train_days"]:
        problems.append(f"metamodel.validation_days ({settings['validation_days']}) must be fewer than "
                        f"metamodel.train_days ({settings['train_days']}): the days before them fit the candidates")
    for key, check, what in (("C", _positive_number, "positive numbers"),
                             ("negative_ratios", lambda v: _whole(v, 1), "whole numbers of at least 1")):
        values = settings[key] if isinstance(settings[key], list) else [settings[key]]
        if not values or not all(check(v) for v in values):
            problems.append(f"metamodel.{key} must be one or a list of {what}, got {settings[key]!r}")
    rules = config["rules"]
    if not isinstance(rules["exclude_sales"], list):
        problems.append(f"rules.exclude_sales must be a list of sale ids, got {rules['exclude_sales']!r}")
    boosts = rules["boost_sales"]
    if not isinstance(boosts, dict) or not all(_positive_number(f) for f in boosts.values()):
        problems.append(f"rules.boost_sales must map sale ids to positive factors, got {boosts!r}")
    release = config["image_labelling"]["release_after_seconds"]
    if not _positive_number(release):
        problems.append(f"image_labelling.release_after_seconds must be a positive number, got {release!r}")
    tolerance = config["registry"]["promotion_tolerance"]
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        problems.append(f"registry.promotion_tolerance must be a number of at least 0 (absolute NDCG), "
                        f"got {tolerance!r}")
    enabled = config["recommenders"]["enabled"]
    if not isinstance(enabled, list) or not enabled or len(set(map(str, enabled))) < len(enabled):
        problems.append(f"recommenders.enabled must be a non-empty list of recommenders, each once, got {enabled!r}")
    if isinstance(enabled, list) and "bpr" in enabled and config["fit"]["max_users"] is not None:
        problems.append("recommenders.enabled has bpr and fit.max_users is set: BPR has no fold-in, so every "
                        "user outside the fit's sample would score 0; leave bpr out or set fit.max_users: null")
    for key, known in _known_names().items():
        chosen = _setting(config, key)
        if key == "recommenders.enabled" and not isinstance(chosen, list):
            continue
        for name in chosen if isinstance(chosen, list) else [chosen]:
            if name not in known:
                problems.append(f"{key}: unknown {name!r} (known: {', '.join(sorted(known))})")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def _known_names() -> dict[str, tuple[str, ...]]:
    """The choices of the settings that name a thing, from the modules that define them."""
    from ..image_labelling.backbone import BACKBONES
    from ..metamodel.model import MetaModel
    from ..metamodel.signals import SIGNALS
    from ..recommenders import HISTORY_RECOMMENDERS
    from ..recommenders.item_cf import ItemCF

    return {"recommenders.enabled": tuple(HISTORY_RECOMMENDERS),
            "recommenders.item_cf.similarity": ItemCF.SIMILARITIES, "metamodel.signals": tuple(SIGNALS),
            "image_labelling.backbone": tuple(BACKBONES), "metamodel.kind": MetaModel.KINDS}


def _read_local(path: str) -> str | None:
    return Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown setting '{name}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and base[key]:  # a group of settings ({}: a mapping value)
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: setting '{name}' must be a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, source, prefix=f"{name}.")
        else:
            merged[key] = value
    return merged


def flatten(config: dict, prefix: str = "") -> dict:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``, for logging parameters."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
