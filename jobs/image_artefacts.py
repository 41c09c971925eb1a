"""The tagger and the themes that a meta-model version's image features are computed with.

``salerank train`` saves them as artifacts of its MLflow run, the run the registered version
points to: ``tagger/tagger.json`` with ``tagger/head.weights.h5`` (Keras weights: arrays, no
code) and ``themes/themes.json`` (NMF's components, their tag vocabulary and the theme names:
numbers and strings, no pickle). It records their versions in the version's metadata
(``image_features``). The nightly run downloads exactly those, checks them against the
metadata and tags and themes with them, retraining nothing: labels added since
(``salerank label-next``) change no feature of that version, and theme ids stay those it
learnt. A version without them cannot be served with image features (exit 2).
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from ..conf import ConfigError
from ..features.themes import ThemeModel
from ..image_labelling.tagger import Tagger

log = logging.getLogger("salerank")

METADATA_KEY = "image_features"
TAGGER_DIR, THEMES_FILE = "tagger", "themes/themes.json"


@dataclass(frozen=True)
class ImageArtefacts:
    """What turns photos into features: the tagger and the themes."""

    tagger: Tagger
    themes: ThemeModel

    def metadata(self) -> dict:
        """What the registered version records of them (``image_features``)."""
        return {"tagger_version": self.tagger.version, "themes_version": self.themes.version,
                "backbone": self.tagger.backbone, "tags": len(self.tagger.tags),
                "themes": len(self.themes.names), "artifacts": [TAGGER_DIR, THEMES_FILE]}

    def log(self) -> None:
        """Log both as artifacts of the active run."""
        with tempfile.TemporaryDirectory() as tmp:
            self.tagger.save(tmp)
            mlflow.log_artifacts(tmp, TAGGER_DIR)
        mlflow.log_dict(self.themes.to_dict(), THEMES_FILE)


def pinned_artefacts(registered, backbone: str) -> ImageArtefacts:
    """The tagger and the themes registered with ``registered`` (a ``RegisteredModel``),
    downloaded from its training run. ``backbone``: the configured one (the version's own is
    used; a warning when they differ).

    Raises ConfigError (exit 2) when the version records none (registered by a salerank that
    did not save them, or trained without photos), when its run does not hold them, or when
    they are not the ones its metadata names.
    """
    retrain = ("train a new version with `salerank train --data DATA --date DATE --out OUT --alias ALIAS` "
               "(it saves them)")
    metadata = mlflow.models.get_model_info(f"models:/{registered.name}/{registered.version}").metadata or {}
    recorded = metadata.get(METADATA_KEY)
    if not recorded:
        raise ConfigError(
            f"{registered.label} was registered without the tagger and themes of its image features "
            "(by an older salerank, or trained without photos): this night cannot compute the image "
            f"features it was trained on; {retrain}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tagger_dir = mlflow.artifacts.download_artifacts(run_id=registered.run_id, artifact_path=TAGGER_DIR,
                                                             dst_path=tmp)
            themes_file = mlflow.artifacts.download_artifacts(run_id=registered.run_id, artifact_path=THEMES_FILE,
                                                              dst_path=tmp)
            artefacts = ImageArtefacts(Tagger.load(tagger_dir),
                                       ThemeModel.from_dict(json.loads(Path(themes_file).read_text())))
        except (MlflowException, OSError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{registered.label}: the tagger and themes of its image features cannot be "
                              f"read from its run {registered.run_id} ({type(err).__name__}: {err}); "
                              f"{retrain}") from None
    found = artefacts.metadata()
    for key in ("tagger_version", "themes_version"):
        if found[key] != recorded.get(key):
            raise ConfigError(f"{registered.label} was registered with {key} {recorded.get(key)}, but its "
                              f"run {registered.run_id} holds {found[key]}; {retrain}")
    if artefacts.tagger.backbone != backbone:
        log.warning("%s tags photos with its own backbone %s, not the configured %s",
                    registered.label, artefacts.tagger.backbone, backbone)
    log.info("image features of %s: tagger %s (%d tags), themes %s (%d)", registered.label,
             found["tagger_version"], found["tags"], found["themes_version"], found["themes"])
    return artefacts
