"""The image tagger: a multi-label head on the frozen backbone's pooled embedding.

Each tag is an independent sigmoid output (a photo may show a pool *and* the sea).  Rare
tags are weighted up in the loss (positive weight = negatives / positives per tag, capped)
so that they are not drowned by frequent ones.  Without hand labels, the backbone's own
ImageNet classes serve as tags (:class:`ImageNetTagger`).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbone import BACKBONES, load_backbone, preprocess
from .classes import imagenet_class_names

HEAD_WEIGHTS, TAGGER_JSON = "head.weights.h5", "tagger.json"


@dataclass
class ImageFailure:
    path: str
    reason: str


@dataclass
class Embeddings:
    """Pooled backbone embeddings of the images that could be read, and why others could not."""

    paths: list[str]
    vectors: np.ndarray  # (n, 1280)
    logits: np.ndarray  # (n, 1000) ImageNet logits, for the ImageNet tagger
    failures: list[ImageFailure] = field(default_factory=list)


class Backbone:
    """The frozen backbone, loaded once: image files -> embeddings and ImageNet logits."""

    def __init__(self, name: str = "efficientnet-lite0", cache_dir: str | Path | None = None,
                 batch_size: int = 32):
        import keras

        self.name = name
        self.batch_size = batch_size
        self.image_size = BACKBONES[name].image_size
        network = load_backbone(name, cache_dir)
        self.model_ = keras.Model(network.input, [network.get_layer("embedding").output, network.output])

    def decode(self, images: list[tuple[str, bytes | None]]) -> tuple[list[str], np.ndarray, list[ImageFailure]]:
        """Decode and preprocess ``(name, content)`` pairs (content None: the file was not
        found); unreadable ones are reported, not raised."""
        from PIL import Image, UnidentifiedImageError

        ok, arrays, failures = [], [], []
        for name, content in images:
            if content is None:
                failures.append(ImageFailure(str(name), "file not found"))
                continue
            try:
                with Image.open(io.BytesIO(content)) as image:
                    arrays.append(preprocess(image, self.image_size))
                ok.append(name)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
                failures.append(ImageFailure(str(name), f"not a readable image ({err})"))
        shape = (0, self.image_size, self.image_size, 3)
        return ok, np.stack(arrays) if arrays else np.zeros(shape, np.float32), failures

    def read(self, paths: list[str]) -> tuple[list[str], np.ndarray, list[ImageFailure]]:
        """:meth:`decode` of local files (benchmarks and tests; the pipeline reads photos
        through Spark)."""
        return self.decode([(p, _local_bytes(p)) for p in paths])

    def embed_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) == 0:
            return np.zeros((0, 1280), np.float32), np.zeros((0, 1000), np.float32)
        vectors, logits = [], []
        for start in range(0, len(batch), self.batch_size):
            v, lg = self.model_(batch[start:start + self.batch_size], training=False)
            vectors.append(np.asarray(v))
            logits.append(np.asarray(lg))
        return np.concatenate(vectors), np.concatenate(logits)

    def embed_images(self, images: list[tuple[str, bytes | None]]) -> Embeddings:
        """Embeddings of ``(name, content)`` pairs, in chunks of a few batches."""
        ok, vectors, logits, failures = [], [], [], []
        for start in range(0, len(images), self.batch_size * 4):
            read, arrays, failed = self.decode(images[start:start + self.batch_size * 4])
            v, lg = self.embed_arrays(arrays)
            ok += read
            vectors.append(v)
            logits.append(lg)
            failures += failed
        if not vectors:
            vectors, logits = [np.zeros((0, 1280), np.float32)], [np.zeros((0, 1000), np.float32)]
        return Embeddings(ok, np.concatenate(vectors), np.concatenate(logits), failures)

    def embed(self, paths: list[str]) -> Embeddings:
        """:meth:`embed_images` of local files (benchmarks and tests)."""
        return self.embed_images([(p, _local_bytes(p)) for p in paths])


def _local_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class ImageTagger:
    """Multi-label head trained on embeddings.

    Parameters
    ----------
    epochs, batch_size, learning_rate : training of the head (Adam).
    l2 : weight decay of the head's kernel.
    max_positive_weight : cap of the per-tag weight of positives.
    seed : makes training reproducible.
    """

    def __init__(self, epochs: int = 60, batch_size: int = 64, learning_rate: float = 1e-3,
                 l2: float = 1e-4, max_positive_weight: float = 10.0, seed: int = 42):
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.l2 = l2
        self.max_positive_weight = max_positive_weight
        self.seed = seed

    def fit(self, vectors: np.ndarray, labels: list[set[str]]) -> ImageTagger:
        import keras
        from keras import ops

        self.tags_ = sorted(set().union(*labels))
        y = self.label_matrix(labels)
        positives = y.sum(axis=0)
        self.positive_weight_ = np.minimum((len(y) - positives) / np.maximum(positives, 1),
                                           self.max_positive_weight).astype(np.float32)
        weight = ops.convert_to_tensor(self.positive_weight_)

        def weighted_bce(y_true, y_pred):
            p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
            loss = -(weight * y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
            return ops.mean(loss, axis=-1)

        keras.utils.set_random_seed(self.seed)
        head = self._network(vectors.shape[1], len(self.tags_))
        head.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss=weighted_bce)
        head.fit(vectors, y, epochs=self.epochs, batch_size=self.batch_size, shuffle=True, verbose=0)
        self.head_ = head
        return self

    def _network(self, inputs: int, outputs: int):
        import keras

        return keras.Sequential([
            keras.Input((inputs,)),
            keras.layers.Dropout(0.2, seed=self.seed),
            keras.layers.Dense(outputs, activation="sigmoid", kernel_regularizer=keras.regularizers.L2(self.l2)),
        ])

    def save(self, folder: str | Path) -> dict:
        """Write the head's weights to ``folder/head.weights.h5`` (Keras weights: arrays, no
        code); return what :meth:`load` needs besides them (JSON-able)."""
        self.head_.save_weights(Path(folder) / HEAD_WEIGHTS)
        return {"version": self.version_, "tags": list(self.tags_), "inputs": int(self.head_.input_shape[-1]),
                "positive_weight": self.positive_weight_.tolist()}

    @classmethod
    def load(cls, folder: str | Path, described: dict) -> ImageTagger:
        """The head :meth:`save` wrote to ``folder``, described by what it returned. Raises
        ValueError unless the weights read are the ones of ``described['version']``."""
        tagger = cls()
        tagger.tags_ = list(described["tags"])
        tagger.positive_weight_ = np.asarray(described["positive_weight"], np.float32)
        tagger.head_ = tagger._network(int(described["inputs"]), len(tagger.tags_))
        tagger.head_.load_weights(Path(folder) / HEAD_WEIGHTS)
        if tagger.version_ != described["version"]:
            raise ValueError(f"the head in {folder} is {tagger.version_}, not {described['version']}")
        return tagger

    def label_matrix(self, labels: list[set[str]]) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.tags_)}
        y = np.zeros((len(labels), len(self.tags_)), np.float32)
        for row, tags in enumerate(labels):
            y[row, [index[t] for t in tags if t in index]] = 1.0
        return y

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        if len(vectors) == 0:
            return np.zeros((0, len(self.tags_)), np.float32)
        return np.asarray(self.head_(vectors, training=False))

    @property
    def version_(self) -> str:
        digest = hashlib.sha256()
        for array in self.head_.get_weights():
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update("|".join(self.tags_).encode())
        return "tagger-" + digest.hexdigest()[:12]


class ImageNetTagger:
    """The ImageNet classes themselves as tags (no hand labels needed)."""

    version_ = "imagenet-classes"

    def __init__(self):
        self.tags_ = imagenet_class_names()

    def predict_proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Tagger:
    """What tags the photos: a backbone and, with hand labels, the head trained on its
    embeddings (None: the backbone's ImageNet classes are the tags). Training saves it with the
    meta-model version (:meth:`save`), and the nightly run tags with exactly that (:meth:`load`)."""

    backbone: str
    head: ImageTagger | None = None

    @property
    def tags(self) -> list[str]:
        return self.head.tags_ if self.head is not None else ImageNetTagger().tags_

    @property
    def version(self) -> str:
        """What the image cache is keyed by, with the photo's content hash."""
        return self.head.version_ if self.head is not None else f"{self.backbone}:{ImageNetTagger.version_}"

    def save(self, folder: str | Path) -> None:
        """``folder/tagger.json`` (backbone, version, the head's tags) and, with a head,
        ``folder/head.weights.h5``."""
        described = {"backbone": self.backbone, "version": self.version,
                     "head": self.head.save(folder) if self.head is not None else None}
        (Path(folder) / TAGGER_JSON).write_text(json.dumps(described, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> Tagger:
        """The tagger :meth:`save` wrote to ``folder``, without training anything. Raises
        FileNotFoundError when a file is missing, ValueError when they do not agree."""
        described = json.loads((Path(folder) / TAGGER_JSON).read_text())
        head = described["head"]
        tagger = cls(described["backbone"], ImageTagger.load(folder, head) if head is not None else None)
        if tagger.version != described["version"]:
            raise ValueError(f"the tagger in {folder} is {tagger.version}, not {described['version']}")
        return tagger


def attribute_of(tag: str) -> str | None:
    """The attribute of a tag written ``attribute=value`` (``colour=Black``), else None."""
    return tag.split("=", 1)[0] if "=" in tag else None


def top_tags(probability: np.ndarray, tags: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Each row's ``k`` most probable tags, best first (ties by tag order), followed by the
    most probable value of each attribute (:func:`attribute_of`) not among them: every photo
    then has a predicted value for every attribute its tagger knows."""
    order = np.argsort(-probability, axis=1, kind="stable")
    attributes = [attribute_of(t) for t in tags]
    if not any(attributes):
        return [[(tags[j], float(probability[i, j])) for j in row[:k]] for i, row in enumerate(order)]
    rows = []
    for i, ranked in enumerate(order):
        kept = list(ranked[:k])
        seen = {attributes[j] for j in kept}
        for j in ranked[k:]:
            if attributes[j] and attributes[j] not in seen:
                kept.append(j)
                seen.add(attributes[j])
        rows.append([(tags[j], float(probability[i, j])) for j in kept])
    return rows


def tagging_metrics(probability: np.ndarray, y: np.ndarray, tags: list[str],
                    threshold: float = 0.5) -> dict:
    """Per-tag precision, recall and average precision; micro and macro F1; and top-1
    accuracy (the most probable tag is one of the image's tags)."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    predicted = (probability >= threshold).astype(int)
    per_tag = {}
    for j, tag in enumerate(tags):
        if y[:, j].sum() == 0:
            continue
        per_tag[tag] = {
            "precision": float(precision_score(y[:, j], predicted[:, j], zero_division=0)),
            "recall": float(recall_score(y[:, j], predicted[:, j], zero_division=0)),
            "average_precision": float(average_precision_score(y[:, j], probability[:, j])),
        }
    top1 = y[np.arange(len(y)), probability.argmax(axis=1)] > 0
    return {
        "top1_accuracy": float(top1.mean()),
        "micro_f1": float(f1_score(y, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
        "per_tag": per_tag,
        "per_attribute": attribute_metrics(probability, y, tags, per_tag),
    }


def attribute_metrics(probability: np.ndarray, y: np.ndarray, tags: list[str], per_tag: dict) -> dict:
    """For each attribute of the tags (:func:`attribute_of`): over the photos labelled with one
    of its values, the accuracy of its most probable value, the share of photos whose value is
    also the most frequent one in ``y`` (the majority guess, for scale), and the mean average
    precision of its values."""
    out = {}
    for attribute in sorted({a for a in map(attribute_of, tags) if a}):
        columns = np.array([j for j, t in enumerate(tags) if attribute_of(t) == attribute])
        labelled = y[:, columns].sum(axis=1) > 0
        if not labelled.any():
            continue
        truth, scores = y[labelled][:, columns], probability[labelled][:, columns]
        hit = truth[np.arange(len(truth)), scores.argmax(axis=1)] > 0
        majority = truth[:, truth.sum(axis=0).argmax()] > 0
        ap = [per_tag[tags[j]]["average_precision"] for j in columns if tags[j] in per_tag]
        out[attribute] = {"accuracy": float(hit.mean()), "majority_accuracy": float(majority.mean()),
                          "mean_average_precision": float(np.mean(ap)) if ap else float("nan"), "values": len(ap),
                          "photos": int(labelled.sum())}
    return out
