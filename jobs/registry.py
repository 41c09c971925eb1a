"""The meta-model in the MLflow model registry: training registers a version, the nightly run
scores with the version that carries an alias (``registry.alias``, e.g. ``champion``).

A version records what it needs at scoring time as model metadata: its feature names, the
scores it ranks within the user and to what depth, and a hash of the configuration sections that shape those
features, so that a night whose configuration would feed it different features stops with a
clear message instead of scoring nonsense; and the versions of the tagger and themes saved
beside it, which the night computes its image features with (``image_artefacts.py``).

Training moves an alias only to a version that is not worse than the one holding it
(:func:`judge_promotion`): both are ranked on the new version's validation examples.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass

import pandas as pd

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..conf import ConfigError
from ..metamodel.model import MetaModel, signed_log1p
from .image_artefacts import METADATA_KEY
from ..metamodel.promotion import incomparable, not_worse, validated_candidate, validation_ndcg, validation_split
from ..recommenders import HISTORY_RECOMMENDERS

log = logging.getLogger("salerank")

TRUSTED_TYPES = [f"{signed_log1p.__module__}.signed_log1p",
                 "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


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
    if not config["image_labelling"]["visual_similarity"]:  # so that models of before keep their hash
        recommenders.pop("visual", None)
    enabled = recommenders.pop("enabled")
    # each only when it differs from what models registered before the setting had
    if set(enabled) != set(HISTORY_RECOMMENDERS):
        recommenders = {name: s for name, s in recommenders.items() if name not in HISTORY_RECOMMENDERS
                        or name in enabled} | {"enabled": sorted(enabled)}
    if config["fit"]["max_users"] is not None and {"als", "bpr"} & set(enabled):
        recommenders["fit_max_users"] = config["fit"]["max_users"]
    relevant = {"recommenders": recommenders, "signals": config["metamodel"]["signals"],
                "ranks": config["metamodel"]["ranks"],
                # only when set, so that models registered before the setting keep their hash
                **({"rank_depth": depth} if (depth := config["metamodel"]["rank_depth"]) else {}),
                "images": {k: config["image_labelling"][k] for k in ("enabled", "backbone", "themes")},
                **({"visual_similarity": True} if config["image_labelling"]["visual_similarity"] else {})}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def register_metamodel(model: MetaModel, config: dict, alias: str | None = None,
                       images: dict | None = None) -> RegisteredModel:
    """Log ``model`` in the active run, register it as a new version and, if ``alias`` is
    given, move the alias to it. ``images``: the versions of the tagger and themes its image
    features were computed with, saved in the same run (``image_artefacts.py``)."""
    name = config["registry"]["model_name"]
    fallback = getattr(model, "fallback_", None)
    if fallback is not None:  # logged beside it in the same run, loaded with it
        logged = mlflow.sklearn.log_model(fallback.pipeline_, name="fallback_metamodel", **_SAVED_WITH)
        fallback = {**_described(fallback), "model_uri": logged.model_uri}
    info = mlflow.sklearn.log_model(
        model.pipeline_, name="metamodel", registered_model_name=name, **_SAVED_WITH,
        metadata={**_described(model), "content_version": model.version_,
                  "feature_config": feature_config_hash(config), **({METADATA_KEY: images} if images else {}),
                  **({"fallback": fallback} if fallback else {})})
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
        log.info("registered %s version %s with alias %r", name, version, alias)
    else:
        log.info("registered %s version %s (no alias moved)", name, version)
    return RegisteredModel(model, name, version, mlflow.active_run().info.run_id)


_SAVED_WITH = {"pip_requirements": ["scikit-learn", "numpy", "salerank"], "skops_trusted_types": TRUSTED_TYPES}


def _described(model: MetaModel) -> dict:
    """What rebuilds ``model`` around its saved pipeline (:func:`_rebuilt`)."""
    return {"feature_names": model.feature_names, "ranked": list(model.ranked), "C": model.C,
            "rank_depth": model.rank_depth, "kind": model.kind,
            "calibration": list(getattr(model, "calibration_", None) or []) or None}


def _rebuilt(metadata: dict, model_uri: str) -> MetaModel:
    """The meta-model :func:`_described` describes, its pipeline loaded from ``model_uri``.
    A version registered before rank_depth existed was trained on exact ranks (None), one
    registered before calibration has no ``(slope, intercept)`` (None: its raw sigmoid)."""
    model = MetaModel(metadata["feature_names"], metadata.get("C", 1.0), tuple(metadata.get("ranked", ())),
                      metadata.get("rank_depth"), metadata.get("kind", "logistic"))
    model.pipeline_ = mlflow.sklearn.load_model(model_uri)
    model.calibration_ = tuple(metadata["calibration"]) if metadata.get("calibration") else None
    model.fallback_ = _rebuilt(metadata["fallback"], metadata["fallback"]["model_uri"]) \
        if metadata.get("fallback") else None
    return model


def _alias_holder(name: str, alias: str):
    """The registry's entry of the version of ``name`` that carries ``alias``, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _load_version(name: str, version, uri: str) -> tuple[RegisteredModel, dict]:
    """The meta-model of ``version`` (a registry entry; ``uri`` names it in messages) and its
    metadata. Raises ConfigError when salerank did not register it."""
    metadata = mlflow.models.get_model_info(f"models:/{name}/{version.version}").metadata or {}
    features = metadata.get("feature_names")
    if not features:
        raise ConfigError(f"{uri} (version {version.version}) was not registered by salerank: "
                          "its metadata has no feature_names")
    model = _rebuilt(metadata, f"models:/{name}/{version.version}")
    return RegisteredModel(model, name, str(version.version), version.run_id), metadata


def load_metamodel(config: dict, needed_features: list[str]) -> RegisteredModel:
    """The version of ``registry.model_name`` that carries ``registry.alias``.

    Raises ConfigError when there is none, or when its features are not the ones that
    ``needed_features`` (what this night's configuration produces) provides.
    """
    name, alias = config["registry"]["model_name"], config["registry"]["alias"]
    version = _alias_holder(name, alias)
    if version is None:
        raise ConfigError(
            f"no version of the registered model {name!r} carries the alias {alias!r} in "
            f"{mlflow.get_tracking_uri()}: train one first with `salerank train --data DATA "
            f"--date DATE --out OUT --alias {alias}`, or set registry.alias")
    uri = f"models:/{name}@{alias}"
    registered, metadata = _load_version(name, version, uri)
    missing = sorted(set(registered.model.feature_names) - set(needed_features))
    if missing:
        raise ConfigError(
            f"{uri} (version {version.version}) needs the features {missing}, which this "
            f"configuration does not produce (it produces {sorted(needed_features)}): score "
            "with the configuration it was trained with, or train a new version")
    if metadata.get("feature_config") != feature_config_hash(config):
        log.warning("%s (version %s) was trained with different recommender or signal settings "
                    "than this configuration: its weights may not fit these scores", uri, version.version)
    log.info("scoring with %s version %s (run %s)", name, version.version, version.run_id)
    return registered


class PromotionError(ConfigError):
    """The version holding the alias cannot be compared with the new one (exit 2): the new
    version is registered, the alias stays where it is."""


MOVES_ALIAS = ("first", "promoted", "forced")


@dataclass(frozen=True)
class Promotion:
    """Whether training moved the alias, and why.

    ``decision``: ``first`` (no version held the alias), ``promoted`` (not worse than the
    champion by more than ``tolerance``), ``forced`` (``--force`` moved it although it was
    worse or could not be compared), ``refused`` (worse: the alias stays) or ``incomparable``
    (the champion cannot be scored on the new version's examples: the alias stays).
    """

    decision: str
    alias: str
    champion: str | None  # NAME/VERSION that held the alias before training
    candidate_ndcg: float | None
    champion_ndcg: float | None
    tolerance: float
    reason: str

    @property
    def moves_alias(self) -> bool:
        return self.decision in MOVES_ALIAS

    def summary(self, version: str) -> str:
        """One line for the console: what happened to the alias, with both scores."""
        scores = " ".join(f"{who} {value:.4f}" for who, value in
                          (("new", self.candidate_ndcg), ("champion", self.champion_ndcg)) if value is not None)
        moved = {"first": f"alias {self.alias!r} moved to {version} (no version held it)",
                 "promoted": f"alias {self.alias!r} moved from {self.champion} to {version}",
                 "forced": f"alias {self.alias!r} moved from {self.champion} to {version} by --force",
                 }.get(self.decision, f"alias {self.alias!r} NOT moved: it stays on {self.champion}")
        return f"{moved}; {self.reason}" + (f" (validation NDCG: {scores})" if scores else "")


def judge_promotion(model: MetaModel, examples: pd.DataFrame, metrics: dict, config: dict,
                    alias: str, force: bool = False) -> Promotion:
    """Whether ``model``, just trained on ``examples`` (``metrics``: what training reported),
    may take ``alias`` from the version holding it, logged to the active MLflow run.

    Both are scored by NDCG@``top_k`` per (user, day) on the examples of the new model's
    validation days (``metamodel.promotion``): the new one as it was validated (fitted on the
    days before them), the champion as registered. The new one must be at most
    ``registry.promotion_tolerance`` below. A champion fitted on some of those days (its run's
    ``as_of`` and ``metamodel.train_days`` say) has seen their purchases: its score is
    optimistic, which favours keeping it (a warning, and the tag
    ``promotion.champion_fitted_days``). ``force`` moves the alias whatever the scores.

    MLflow: metrics ``promotion.candidate_ndcg``, ``promotion.champion_ndcg``,
    ``promotion.tolerance``, ``promotion.validation_lists``; tags ``promotion`` (the decision),
    ``promotion.champion`` and ``promotion.reason``.
    """
    name, k = config["registry"]["model_name"], config["top_k"]
    tolerance = float(config["registry"]["promotion_tolerance"])
    _, validation = validation_split(examples, config["metamodel"]["validation_days"])
    validated = validated_candidate(examples, model, metrics, config["metamodel"]["validation_days"])
    candidate_ndcg, lists = validation_ndcg(validated, validation, k) if validated else (None, 0)
    holder, champion_ndcg, fitted_days = _alias_holder(name, alias), None, None
    champion = f"{name}/{holder.version}" if holder else None
    if holder is None:
        decision, reason = "first", "nothing to compare with"
    else:
        try:
            registered, _ = _load_version(name, holder, f"models:/{name}@{alias}")
            why = incomparable(registered.model, model)
        except ConfigError as err:
            registered, why = None, str(err)
        if why:
            decision, reason = "incomparable", f"{champion} cannot be scored on this version's examples: {why}"
        elif validated is None:
            decision, reason = "refused", ("training could not validate (too few days, or a single class "
                                           "on the validation days): nothing shows it is not worse")
        else:
            champion_ndcg, _ = validation_ndcg(registered.model, validation, k)
            if registered.model.fallback_ is not None and model.fallback_ is None:
                log.warning("%s ranks its fallback list with a non-personal twin and this version has "
                            "none (no feature is the same for every user): its fallback list would be "
                            "the personal model's, which ranked worse than popularity on the world", champion)
            fitted_days = _days_fitted_on(holder.run_id, sorted(validation["day"].unique()))
            if fitted_days:
                log.warning("%s was fitted on %d of the %d validation days: its score there is optimistic, "
                            "which favours keeping it", champion, fitted_days, validation["day"].nunique())
            better = not_worse(candidate_ndcg, champion_ndcg, tolerance)
            decision = "promoted" if better else "refused"
            reason = f"{'not ' if better else ''}worse than {champion} by more than the tolerance {tolerance:g}"
        if force and decision in ("refused", "incomparable"):
            decision, reason = "forced", f"{reason}; moved anyway (--force)"
    promotion = Promotion(decision, alias, champion, candidate_ndcg, champion_ndcg, tolerance, reason)
    mlflow.log_metrics({"promotion.tolerance": tolerance, "promotion.validation_lists": float(lists),
                        **({"promotion.candidate_ndcg": candidate_ndcg} if candidate_ndcg is not None else {}),
                        **({"promotion.champion_ndcg": champion_ndcg} if champion_ndcg is not None else {})})
    mlflow.set_tags({"promotion": decision, "promotion.reason": reason[:5000],
                     **({"promotion.champion": champion} if champion else {}),
                     **({"promotion.champion_fitted_days": fitted_days} if fitted_days is not None else {})})
    (log.warning if decision in ("refused", "incomparable", "forced") else log.info)(
        "promotion to %r: %s (%s)", alias, decision, reason)
    return promotion


def _days_fitted_on(run_id: str, days: list) -> int | None:
    """How many of ``days`` the training run ``run_id`` fitted on (the ``train_days`` days
    before its ``as_of``), or None when its parameters do not say."""
    params = MlflowClient().get_run(run_id).data.params
    try:
        as_of = dt.date.fromisoformat(params["as_of"])
        first = as_of - dt.timedelta(days=int(params["metamodel.train_days"]))
    except (KeyError, ValueError):
        return None
    return sum(first <= pd.Timestamp(day).date() < as_of for day in days)
