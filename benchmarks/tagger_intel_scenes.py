"""Tagger accuracy on ../shared/data/intel-scenes and tagging throughput.

    python benchmarks/tagger_intel_scenes.py [--data ../shared/data/intel-scenes] [--per-class N] [--backbone NAME]

Trains the multi-label head on the frozen EfficientNet-Lite embeddings (Lite0 by default) of ``train/`` and
reports top-1 accuracy and macro F1 on ``test/``; then times, on the same test images and
batch size, the bare backbone on already-decoded arrays against the whole tagging path
(decode, crop, resize, backbone, head) and prints the ratio.
"""
from __future__ import annotations

import argparse
import hashlib
import platform
import time
from pathlib import Path

import numpy as np

from salerank.image_labelling.tagger import Backbone, ImageTagger, tagging_metrics


def labelled(folder: Path, per_class: int | None):
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))[:per_class]
        paths += [str(f) for f in files]
        labels += [{class_dir.name}] * len(files)
    return paths, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "intel-scenes"))
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    args = parser.parse_args()
    data = Path(args.data)
    backbone = Backbone(args.backbone, batch_size=args.batch_size)
    train_paths, train_labels = labelled(data / "train", args.per_class)
    test_paths, test_labels = labelled(data / "test", args.per_class)

    start = time.perf_counter()
    train = backbone.embed(train_paths)
    embed_seconds = time.perf_counter() - start
    tagger = ImageTagger().fit(train.vectors, train_labels)

    # the whole path on the test images: decode + preprocess + backbone + head
    start = time.perf_counter()
    test = backbone.embed(test_paths)
    probability = tagger.predict_proba(test.vectors)
    full_seconds = time.perf_counter() - start
    # the bare backbone on the same images, already decoded, same batch size
    _, arrays, _ = backbone.read(test_paths)
    start = time.perf_counter()
    backbone.embed_arrays(arrays)
    bare_seconds = time.perf_counter() - start

    metrics = tagging_metrics(probability, tagger.label_matrix(test_labels), tagger.tags_)
    n = len(test_paths)
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores")
    print(f"train images: {len(train_paths)} (embedded in {embed_seconds:.1f} s), test images: {n}")
    print(f"top-1 accuracy: {metrics['top1_accuracy']:.4f}")
    print(f"macro F1: {metrics['macro_f1']:.4f}   micro F1: {metrics['micro_f1']:.4f}")
    for tag, row in metrics["per_tag"].items():
        print(f"  {tag:10s} precision {row['precision']:.3f} recall {row['recall']:.3f} AP {row['average_precision']:.3f}")
    # a test photo whose bytes are also in train/ measures memory, not generalisation: the same
    # figures on the test photos with no identical file in train/ (salerank's own held-out
    # split keeps every content hash, and every sale, on one side)
    seen = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in train_paths}
    fresh = np.array([hashlib.sha256(Path(p).read_bytes()).hexdigest() not in seen for p in test_paths])
    print(f"test photos identical to a train photo: {int((~fresh).sum())} of {n}")
    if fresh.any() and not fresh.all():
        unseen = tagging_metrics(probability[fresh], tagger.label_matrix([t for t, f in zip(test_labels, fresh) if f]),
                                 tagger.tags_)
        print(f"  without them: top-1 accuracy {unseen['top1_accuracy']:.4f}, macro F1 {unseen['macro_f1']:.4f}")
    print(f"throughput, whole tagging path: {n / full_seconds:.1f} images/s")
    print(f"throughput, bare backbone:      {n / bare_seconds:.1f} images/s")
    print(f"ratio whole path / bare backbone: {bare_seconds / full_seconds:.2f}")


if __name__ == "__main__":
    main()
