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
        When the file is missing or not YAML, names a key the defaults do not have, or sets
        ``metamodel.rank_depth`` to anything but null or a positive whole number.
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
    lag = config["max_data_lag_days"]
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
        raise ConfigError(f"{path or 'configuration'}: max_data_lag_days must be null or a whole number "
                          f"of at least 0, got {lag!r}")
    depth = config["metamodel"]["rank_depth"]
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ConfigError(f"{path or 'configuration'}: metamodel.rank_depth must be null or a "
                          f"whole number of at least 1, got {depth!r}")
    return config


def _read_local(path: str) -> str | None:
    return Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown setting '{name}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
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
