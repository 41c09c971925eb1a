"""The meta-model in the MLflow model registry: training registers a version, the nightly run
scores with the version that carries an alias (``registry.alias``, e.g. ``champion``).

A version records what it needs at scoring time as model metadata: its feature names, the
scores it ranks within the user and to what depth, and a hash of the configuration sections that shape those
features, so that a night whose configuration would feed it different features stops with a
clear message instead of scoring nonsense.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..conf import ConfigError
from ..metamodel.model import MetaModel, signed_log1p

log = logging.getLogger("salerank")

TRUSTED_TYPES = [f"{signed_log1p.__module__}.signed_log1p"]


@dataclass(frozen=True)
class RegisteredModel:
    """A loaded meta-model and where it came from."""

    model: MetaModel
    name: str
    version: str
    run_id: str

    @property
    def label(self) -> str:
        """What every output row records: ``NAME/VERSION``."""
        return f"{self.name}/{self.version}"


def feature_config_hash(config: dict) -> str:
    """Hash of the settings that decide what the meta-model's features mean."""
    recommenders = copy.deepcopy(config["recommenders"])
    recommenders["bpr"].pop("threads", None)  # how fast BPR fits, not what its scores mean
    relevant = {"recommenders": recommenders, "signals": config["metamodel"]["signals"],
                "ranks": config["metamodel"]["ranks"],
                # only when set, so that models registered before the setting keep their hash
                **({"rank_depth": depth} if (depth := config["metamodel"]["rank_depth"]) else {}),
                "images": {k: config["image_labelling"][k] for k in ("enabled", "backbone", "themes")}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def register_metamodel(model: MetaModel, config: dict, alias: str | None = None) -> RegisteredModel:
    """Log ``model`` in the active run, register it as a new version and, if ``alias`` is
    given, move the alias to it."""
    name = config["registry"]["model_name"]
    info = mlflow.sklearn.log_model(
        model.pipeline_, name="metamodel", registered_model_name=name,
        pip_requirements=["scikit-learn", "numpy", "salerank"], skops_trusted_types=TRUSTED_TYPES,
        metadata={"feature_names": model.feature_names, "ranked": list(model.ranked), "C": model.C,
                  "rank_depth": model.rank_depth, "content_version": model.version_,
                  "feature_config": feature_config_hash(config)})
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
        log.info("registered %s version %s with alias %r", name, version, alias)
    else:
        log.info("registered %s version %s (no alias moved)", name, version)
    return RegisteredModel(model, name, version, mlflow.active_run().info.run_id)


def load_metamodel(config: dict, needed_features: list[str]) -> RegisteredModel:
    """The version of ``registry.model_name`` that carries ``registry.alias``.

    Raises ConfigError when there is none, or when its features are not the ones that
    ``needed_features`` (what this night's configuration produces) provides.
    """
    name, alias = config["registry"]["model_name"], config["registry"]["alias"]
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        raise ConfigError(
            f"no version of the registered model {name!r} carries the alias {alias!r} in "
            f"{mlflow.get_tracking_uri()}: train one first with `salerank train --data DATA "
            f"--date DATE --out OUT --alias {alias}`, or set registry.alias") from None
    uri = f"models:/{name}@{alias}"
    metadata = mlflow.models.get_model_info(uri).metadata or {}
    features = metadata.get("feature_names")
    if not features:
        raise ConfigError(f"{uri} (version {version.version}) was not registered by salerank: "
                          "its metadata has no feature_names")
    missing = sorted(set(features) - set(needed_features))
    if missing:
        raise ConfigError(
            f"{uri} (version {version.version}) needs the features {missing}, which this "
            f"configuration does not produce (it produces {sorted(needed_features)}): score "
            "with the configuration it was trained with, or train a new version")
    if metadata.get("feature_config") != feature_config_hash(config):
        log.warning("%s (version %s) was trained with different recommender or signal settings "
                    "than this configuration: its weights may not fit these scores", uri, version.version)
    # a version registered before rank_depth existed was trained on exact ranks (None)
    model = MetaModel(features, metadata.get("C", 1.0), tuple(metadata.get("ranked", ())),
                      metadata.get("rank_depth"))
    model.pipeline_ = mlflow.sklearn.load_model(uri)
    log.info("scoring with %s version %s (run %s)", name, version.version, version.run_id)
    return RegisteredModel(model, name, str(version.version), version.run_id)
