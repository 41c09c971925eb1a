"""The nightly image stage: tag every sale photo inside Spark, with a cache.

The tagger is chosen (and, with hand labels, trained) on the driver; the photos are then
tagged per partition with ``mapInPandas``, the backbone loaded once per worker process.
An image already tagged by the same model version (same file content hash) is read from
the cache instead.  Missing, corrupt and non-image files are reported by path and
skipped.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .tagger import Backbone, ImageNetTagger, ImageTagger, tagging_metrics, top_tags

log = logging.getLogger("salerank")

TAG_SCHEMA = ("content_hash string, model_version string, tag string, probability double, "
              "rank int, failure string")
_WORKER_BACKBONES: dict = {}  # per Python worker process: (name, cache_dir) -> Backbone


@dataclass
class TaggingResult:
    tags: DataFrame  # sale_id, image_path, tag, probability, rank, model_version
    cache: DataFrame  # content_hash, model_version, tag, probability, rank, failure
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image_path, reason)
    model_version: str = ""
    metrics: dict = field(default_factory=dict)
    tagger: ImageTagger | None = None  # the trained head, when there were hand labels


def _backbone(name: str, cache_dir: str | None) -> Backbone:
    key = (name, cache_dir)
    if key not in _WORKER_BACKBONES:
        _WORKER_BACKBONES[key] = Backbone(name, cache_dir)
    return _WORKER_BACKBONES[key]


def content_hash(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def train_tagger(backbone: Backbone, labels: pd.DataFrame, data_dir: str, seed: int,
                 holdout: float = 0.2) -> tuple[ImageTagger, dict]:
    """Fit the head on the hand-labelled images; measure it on a held-out fifth first."""
    grouped = labels.groupby("image_path")["tag"].apply(set)
    paths = [os.path.join(data_dir, p) for p in grouped.index]
    embedded = backbone.embed(paths)
    label_of = dict(zip(paths, grouped.to_list()))
    y_sets = [label_of[p] for p in embedded.paths]
    order = np.random.default_rng(seed).permutation(len(y_sets))
    n_test = int(len(order) * holdout)
    metrics = {}
    if n_test >= 5:
        test, train = order[:n_test], order[n_test:]
        held = ImageTagger(seed=seed).fit(embedded.vectors[train], [y_sets[i] for i in train])
        measured = tagging_metrics(held.predict_proba(embedded.vectors[test]),
                                   held.label_matrix([y_sets[i] for i in test]), held.tags_)
        metrics = {k: v for k, v in measured.items() if k != "per_tag"}
        metrics["per_tag"] = measured["per_tag"]
    return ImageTagger(seed=seed).fit(embedded.vectors, y_sets), metrics


def tag_images(sale_images: DataFrame, image_labels: DataFrame | None, data_dir: str,
               cache: DataFrame | None, config: dict, seed: int) -> TaggingResult:
    """Tag every image of ``sale_images`` (paths relative to ``data_dir``)."""
    settings = config["image_labelling"]
    name, weights_cache, k = settings["backbone"], settings["weights_cache_dir"], settings["top_k"]
    labels = image_labels.toPandas() if image_labels is not None else pd.DataFrame()
    metrics: dict = {}
    tagger = None
    if len(labels):
        tagger, metrics = train_tagger(_backbone(name, weights_cache), labels, data_dir, seed)
        head = tagger.head_.get_weights()  # kernel, bias: applied in numpy on the workers
        tags, version = tagger.tags_, tagger.version_
    else:
        imagenet = ImageNetTagger()
        head, tags, version = None, imagenet.tags_, f"{name}:{imagenet.version_}"
    log.info("tagging images with %s (%d tags)", version, len(tags))

    def tag_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        backbone = None
        for batch in batches:
            backbone = backbone or _backbone(name, weights_cache)
            paths = [os.path.join(data_dir, p) for p in batch["image_path"]]
            embedded = backbone.embed(paths)
            if head is None:
                probability = ImageNetTagger().predict_proba_from_logits(embedded.logits)
            else:
                probability = 1.0 / (1.0 + np.exp(-(embedded.vectors @ head[0] + head[1])))
            by_path = dict(zip(paths, batch["content_hash"]))
            rows = [(by_path[p], version, tag, prob, rank + 1, None)
                    for p, best in zip(embedded.paths, top_tags(probability, tags, k))
                    for rank, (tag, prob) in enumerate(best)]
            rows += [(by_path[f.path], version, None, None, None, f.reason) for f in embedded.failures]
            yield pd.DataFrame(rows, columns=["content_hash", "model_version", "tag", "probability",
                                              "rank", "failure"])

    def hash_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            hashes = [content_hash(os.path.join(data_dir, p)) for p in batch["image_path"]]
            yield batch.assign(content_hash=hashes)

    images = sale_images.select("sale_id", "image_path")
    hashed = images.select("image_path").distinct().mapInPandas(
        hash_partition, "image_path string, content_hash string").cache()
    known = (cache.filter(F.col("model_version") == version) if cache is not None
             else hashed.sparkSession.createDataFrame([], TAG_SCHEMA))
    todo = (hashed.filter(F.col("content_hash").isNotNull())
            .join(known.select("content_hash").distinct(), "content_hash", "left_anti")
            .dropDuplicates(["content_hash"]))
    partitions = max(1, int(config["spark"]["scoring_partitions"]))
    fresh = todo.repartition(partitions).mapInPandas(tag_partition, TAG_SCHEMA).cache()
    n_fresh = fresh.select("content_hash").distinct().count()
    log.info("%d images tagged now, the others from the cache", n_fresh)
    all_tags = known.unionByName(fresh)
    missing = hashed.filter(F.col("content_hash").isNull()).select(
        "image_path", F.lit("file not found").alias("failure"))
    failed = hashed.join(all_tags.filter(F.col("failure").isNotNull()), "content_hash").select(
        "image_path", "failure").unionByName(missing).toPandas()
    tags_df = (images.join(hashed, "image_path")
               .join(all_tags.filter(F.col("failure").isNull()), "content_hash")
               .select("sale_id", "image_path", "tag", "probability", "rank", "model_version"))
    new_cache = all_tags if cache is None else cache.unionByName(fresh)
    return TaggingResult(tags_df, new_cache, list(failed.itertuples(index=False, name=None)),
                         version, metrics, tagger)
