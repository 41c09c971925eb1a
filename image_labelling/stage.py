"""The nightly image stage: tag every sale photo inside Spark, with a cache.

The tagger is given (the one registered with the meta-model) or chosen (and, with hand
labels, trained) on the driver; the photos are then tagged per partition with
``mapInPandas``, the backbone loaded once per worker process.
The executors read the photos through Spark's ``binaryFile`` source, so the data folder may
be on any Hadoop file system (HDFS, S3A, ...) with no mount shared by the workers.  An
image already tagged by the same model version (same content hash) is read from the cache
instead.  Missing, corrupt and non-image files are reported by path and skipped.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..storage import FileSystem, join
from .backbone_process import BackboneProcess
from .tagger import Backbone, Embeddings, ImageNetTagger, ImageTagger, Tagger, tagging_metrics, top_tags

log = logging.getLogger("salerank")

PHOTOS_PER_PARTITION = 256
PER_KEYS = ("per_tag", "per_attribute")  # the held-out metrics that are tables, not numbers
TAG_SCHEMA = ("content_hash string, tagger_version string, tag string, probability double, "
              "rank int, failure string, embedding binary")
EMBEDDING_DTYPE = np.float16  # the backbone's pooled embedding, on each photo's rank-1 row
_WORKER_BACKBONES: dict = {}  # per Python process: (name, cache_dir, idle) -> BackboneProcess


@dataclass
class TaggingResult:
    tags: DataFrame  # sale_id, image_path, tag, probability, rank, tagger_version
    cache: DataFrame  # content_hash, tagger_version, tag, probability, rank, failure, embedding
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image_path, reason)
    tagger_version: str = ""
    metrics: dict = field(default_factory=dict)
    tagger: Tagger | None = None  # what tagged the photos
    cached: list[DataFrame] = field(default_factory=list)  # what tags and cache are read from
    embeddings: DataFrame | None = None  # sale_id, image_path, embedding (sale_embeddings() reads it)

    def release(self) -> None:
        """Unpersist the cached frames; ``tags`` and ``cache`` must not be read afterwards."""
        for frame in self.cached:
            frame.unpersist()


def sale_embeddings(embeddings: pd.DataFrame) -> pd.DataFrame:
    """Sales x 1280: the mean of each sale's photos' embeddings, each photo's first scaled to
    unit length, the mean then too (``embeddings``: ``TaggingResult.embeddings`` as pandas)."""
    if not len(embeddings):
        return pd.DataFrame()
    vectors = np.stack([np.frombuffer(b, EMBEDDING_DTYPE).astype(np.float64) for b in embeddings["embedding"]])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    means = pd.DataFrame(vectors, index=embeddings["sale_id"].to_numpy()).groupby(level=0).mean().sort_index()
    return means.div(np.maximum(np.linalg.norm(means.to_numpy(), axis=1), 1e-12), axis=0)


def _backbone(name: str, cache_dir: str | None, idle_seconds: float) -> BackboneProcess:
    """The backbone of this process (a Spark worker, or the driver), in a child process that
    exits after ``idle_seconds`` without photos (``image_labelling.release_after_seconds``):
    the workers' TensorFlow memory is released once the photos are tagged. (The driver still
    imports Keras to train the tagger's head.)"""
    key = (name, cache_dir, idle_seconds)
    if key not in _WORKER_BACKBONES:
        _WORKER_BACKBONES[key] = BackboneProcess(name, cache_dir, idle_seconds)
    return _WORKER_BACKBONES[key]


def content_hash(content: bytes | None) -> str | None:
    return None if content is None else hashlib.sha256(content).hexdigest()


@contextmanager
def _progress(report, every_seconds: float = 15.0):
    """Call ``report`` every ``every_seconds`` while the block runs (a long Spark action)."""
    done = threading.Event()

    def loop():
        while not done.wait(every_seconds):
            report()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def locate_photos(spark, data_dir: str, image_paths: list[str]) -> tuple[dict[str, str], list[str]]:
    """Each photo's full URI (``image_path`` is relative to ``data_dir``), found by listing the
    photos' folders once; and the photos that are not there."""
    files = FileSystem(spark, data_dir)
    root = files.qualified(data_dir)
    wanted = {p: join(root, re.sub(r"(^|/)(\./)+", r"\1", re.sub("/+", "/", p))) for p in image_paths}
    present: set[str] = set()
    for folder in sorted({uri.rsplit("/", 1)[0] for uri in wanted.values()}):
        if files.is_dir(folder):
            present.update(join(folder, name) for name in files.names(folder))
    located = {p: uri for p, uri in wanted.items() if uri in present}
    return located, sorted(set(image_paths) - set(located))


def read_photos(spark, located: dict[str, str]) -> DataFrame:
    """``image_path, content``: the photos' bytes, read by the executors through Spark's
    ``binaryFile`` source (any Hadoop file system, no shared mount)."""
    if not located:
        return spark.createDataFrame([], "image_path string, content binary")
    names = spark.createDataFrame(sorted((uri, p) for p, uri in located.items()), "path string, image_path string")
    # a load path is a glob: escape its metacharacters so that a file named a[1].jpg is itself
    globs = [re.sub(r"([\\\[\]{}*?])", r"\\\1", uri) for uri in located.values()]
    binary = spark.read.format("binaryFile").load(globs).select("path", "content")
    return binary.join(F.broadcast(names), "path").select("image_path", "content")


def photo_bytes(spark, data_dir: str, image_paths: list[str]) -> list[tuple[str, bytes | None]]:
    """``(image_path, content)`` on the driver, None for a missing photo: for the few photos
    the driver itself needs (hand-labelled ones, the report's thumbnails, label-next)."""
    located, _ = locate_photos(spark, data_dir, image_paths)
    read = dict(read_photos(spark, located).toPandas().itertuples(index=False, name=None))
    return [(p, read.get(p)) for p in image_paths]


def embed_in_chunks(backbone: Backbone | BackboneProcess, spark, data_dir: str, image_paths: list[str],
                    chunk: int = PHOTOS_PER_PARTITION) -> Embeddings:
    """Embeddings of many photos on the driver, a chunk at a time: the driver holds the bytes
    of one chunk of photos, not of all of them."""
    parts = [backbone.embed_images(photo_bytes(spark, data_dir, image_paths[i:i + chunk]))
             for i in range(0, len(image_paths), chunk)]
    if not parts:
        return backbone.embed_images([])
    return Embeddings([p for e in parts for p in e.paths], np.concatenate([e.vectors for e in parts]),
                      np.concatenate([e.logits for e in parts]), [f for e in parts for f in e.failures])


def holdout_groups(images: list[tuple[str, bytes | None]], sales_of: dict[str, set[str]] | None = None) -> np.ndarray:
    """A group number per image such that photos of one sale, and identical files (one content
    hash) wherever they are used, share a group: a held-out set drawn by group never has a
    sale, or a file, on both sides (photos of one sale look alike; a reused file is the same
    photo). Union-find over the sales and content hashes of each image."""
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[tuple[str, str], int] = {}
    for i, (path, content) in enumerate(images):
        keys = [("sale", sale) for sale in sorted((sales_of or {}).get(path, ()))]
        keys.append(("file", hashlib.sha256(content).hexdigest() if content is not None else path))
        for key in keys:
            j = first_of.setdefault(key, i)
            parent[root(i)] = root(j)
    roots = [root(i) for i in range(len(images))]
    return np.unique(roots, return_inverse=True)[1]


def held_out(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Which items are held out: whole groups, taken in a seeded order while they fit within
    ``share`` of the items (a group too large to fit is passed over)."""
    sizes, room, chosen = np.bincount(groups), share * len(groups), []
    for group in np.random.default_rng(seed).permutation(np.unique(groups)):
        if sizes[group] <= room:
            chosen.append(group)
            room -= sizes[group]
    return np.isin(groups, chosen)


def train_tagger(backbone: Backbone | BackboneProcess, labels: pd.DataFrame, images: list[tuple[str, bytes | None]],
                 seed: int, holdout: float = 0.2,
                 sales_of: dict[str, set[str]] | None = None) -> tuple[ImageTagger, dict]:
    """Fit the head on the hand-labelled images (``images``: their ``(image_path, content)``);
    measure it first on about a held-out fifth, drawn by whole groups of
    :func:`holdout_groups` (``sales_of``: each photo's sales)."""
    grouped = labels.groupby("image_path")["tag"].apply(set)
    kept = [item for item in images if item[0] in grouped.index]
    embedded = backbone.embed_images(kept)
    y_sets = [grouped[p] for p in embedded.paths]
    group_of = dict(zip((p for p, _ in kept), holdout_groups(kept, sales_of)))
    groups = np.array([group_of[p] for p in embedded.paths])
    is_test = held_out(groups, holdout, seed)
    metrics = {}
    if is_test.sum() >= 5 and (~is_test).sum():
        test, train = np.flatnonzero(is_test), np.flatnonzero(~is_test)
        held = ImageTagger(seed=seed).fit(embedded.vectors[train], [y_sets[i] for i in train])
        measured = tagging_metrics(held.predict_proba(embedded.vectors[test]),
                                   held.label_matrix([y_sets[i] for i in test]), held.tags_)
        metrics = {k: v for k, v in measured.items() if k not in PER_KEYS}
        metrics.update({"held_out_photos": float(len(test)), "held_out_groups": float(len(np.unique(groups[test])))})
        metrics.update({k: measured[k] for k in PER_KEYS})
    return ImageTagger(seed=seed).fit(embedded.vectors, y_sets), metrics


def _sales_of(sale_images: DataFrame | None, labels: pd.DataFrame) -> dict[str, set[str]]:
    """The sales of each labelled photo."""
    if sale_images is None:
        return {}
    pairs = sale_images.select("image_path", "sale_id").distinct().toPandas()
    pairs = pairs[pairs["image_path"].isin(set(labels["image_path"]))]
    return pairs.groupby("image_path")["sale_id"].apply(set).to_dict()


def fit_tagger(spark, image_labels: DataFrame | None, data_dir: str, config: dict, seed: int,
               sale_images: DataFrame | None = None) -> tuple[Tagger, dict]:
    """The tagger of ``image_labels`` (a head trained on the configured backbone) and its
    held-out metrics; without labels, the backbone's ImageNet classes."""
    name, weights_cache = config["image_labelling"]["backbone"], config["image_labelling"]["weights_cache_dir"]
    labels = image_labels.toPandas() if image_labels is not None else pd.DataFrame()
    if not len(labels):
        return Tagger(name), {}
    labelled = photo_bytes(spark, data_dir, sorted(set(labels["image_path"])))
    idle = config["image_labelling"]["release_after_seconds"]
    head, metrics = train_tagger(_backbone(name, weights_cache, idle), labels, labelled, seed,
                                 sales_of=_sales_of(sale_images, labels))
    return Tagger(name, head), metrics


def tag_images(sale_images: DataFrame, image_labels: DataFrame | None, data_dir: str,
               cache: DataFrame | None, config: dict, seed: int, tagger: Tagger | None = None) -> TaggingResult:
    """Tag every image of ``sale_images`` (paths relative to ``data_dir``, any Hadoop URI) with
    ``tagger``, or when None with the one :func:`fit_tagger` learns from ``image_labels``."""
    spark = sale_images.sparkSession
    weights_cache, k = config["image_labelling"]["weights_cache_dir"], config["image_labelling"]["top_k"]
    idle = config["image_labelling"]["release_after_seconds"]
    metrics: dict = {}
    if tagger is None:
        tagger, metrics = fit_tagger(spark, image_labels, data_dir, config, seed, sale_images)
    name, tags, version = tagger.backbone, tagger.tags, tagger.version
    # kernel, bias: applied in numpy on the workers
    head = tagger.head.head_.get_weights() if tagger.head is not None else None
    log.info("tagging images with %s (%d tags)", version, len(tags))
    tagged = spark.sparkContext.accumulator(0)  # photos done, as the tasks finish

    def tag_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        backbone = None
        for batch in batches:
            backbone = backbone or _backbone(name, weights_cache, idle)
            embedded = backbone.embed_images(list(zip(batch["image_path"], batch["content"])))
            if head is None:
                probability = ImageNetTagger().predict_proba_from_logits(embedded.logits)
            else:
                probability = 1.0 / (1.0 + np.exp(-(embedded.vectors @ head[0] + head[1])))
            by_path = dict(zip(batch["image_path"], map(content_hash, batch["content"])))
            vectors = [v.astype(EMBEDDING_DTYPE).tobytes() for v in embedded.vectors]
            rows = [(by_path[p], version, tag, prob, rank + 1, None, vector if rank == 0 else None)
                    for p, vector, best in zip(embedded.paths, vectors, top_tags(probability, tags, k))
                    for rank, (tag, prob) in enumerate(best)]
            rows += [(by_path[f.path], version, None, None, None, f.reason, None) for f in embedded.failures]
            tagged.add(len(batch))
            yield pd.DataFrame(rows, columns=["content_hash", "tagger_version", "tag", "probability",
                                              "rank", "failure", "embedding"])

    def hash_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield pd.DataFrame({"image_path": batch["image_path"],
                                "content_hash": [content_hash(c) for c in batch["content"]]})

    images = sale_images.select("sale_id", "image_path")
    located, missing = locate_photos(spark, data_dir, sorted(
        r["image_path"] for r in images.select("image_path").distinct().collect()))
    hashed = read_photos(spark, located).mapInPandas(hash_partition, "image_path string, content_hash string").cache()
    if cache is not None and "model_version" in cache.columns:  # a cache written before the rename
        cache = cache.withColumnRenamed("model_version", "tagger_version")
    if cache is not None and "embedding" not in cache.columns:  # written before embeddings were kept
        cache = cache.withColumn("embedding", F.lit(None).cast("binary"))
    cached = (cache.filter(F.col("tagger_version") == version) if cache is not None
              else spark.createDataFrame([], TAG_SCHEMA))
    # a photo is done when it failed or is tagged; with visual similarity, also embedded: one
    # tagged before embeddings were kept is then tagged again and its old rows replaced
    complete = F.col("embedding").isNotNull() if config["image_labelling"]["visual_similarity"] else F.lit(True)
    done = cached.filter(F.col("failure").isNotNull() | complete).select("content_hash").distinct()
    known = cached.join(done, "content_hash")
    todo = [r["image_path"] for r in hashed.join(done, "content_hash", "left_anti")
            .dropDuplicates(["content_hash"]).select("image_path").collect()]
    # partitions of at most a few hundred photos: a worker holds one partition's bytes at a time
    partitions = max(1, int(config["spark"]["scoring_partitions"]), -(-len(todo) // PHOTOS_PER_PARTITION))
    log.info("%d of %d photos to tag, the others from the cache", len(todo), len(located))
    fresh = (read_photos(spark, {p: located[p] for p in todo}).repartition(partitions, "image_path")
             .mapInPandas(tag_partition, TAG_SCHEMA).cache())
    with _progress(lambda: log.info("photos tagged so far: %d of %d", tagged.value, len(todo))):
        n_fresh = fresh.select("content_hash").distinct().count()
    log.info("%d photos tagged now", n_fresh)
    all_tags = known.unionByName(fresh)
    not_found = spark.createDataFrame([(p, "file not found") for p in missing], "image_path string, failure string")
    failed = hashed.join(all_tags.filter(F.col("failure").isNotNull()), "content_hash").select(
        "image_path", "failure").unionByName(not_found).toPandas()
    tags_df = (images.join(hashed, "image_path")
               .join(all_tags.filter(F.col("failure").isNull()), "content_hash")
               .select("sale_id", "image_path", "tag", "probability", "rank", "tagger_version"))
    redone = fresh.select("content_hash", "tagger_version").distinct()
    new_cache = all_tags if cache is None else cache.join(
        redone, ["content_hash", "tagger_version"], "left_anti").unionByName(fresh)
    embeddings = (images.join(hashed, "image_path")
                  .join(all_tags.filter(F.col("embedding").isNotNull()), "content_hash")
                  .select("sale_id", "image_path", "embedding"))
    return TaggingResult(tags_df, new_cache, list(failed.itertuples(index=False, name=None)),
                         version, metrics, tagger, [hashed, fresh], embeddings)
