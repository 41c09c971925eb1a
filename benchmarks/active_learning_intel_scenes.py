"""How many hand labels active learning saves against random choice, on intel-scenes.

    python benchmarks/active_learning_intel_scenes.py [--rounds 12] [--batch 24] [--repeats 3]
        [--first 12] [--cache embeddings.npz]

Starts with nothing labelled, as a team does: the first ``first`` photos of ``train/`` are
chosen by each strategy without a tagger, then in each round ``batch`` more are labelled,
the head is retrained and top-1 accuracy is measured on ``test/``.  Strategies:

- ``random``: uniform choice from the unlabelled pool;
- ``top-score``: the ``batch`` best uncertainty x density scores (and, at the start, the
  densest photos);
- ``diverse``: what ``salerank label-next`` does (:func:`~salerank.image_labelling.
  active_learning.propose`): the best-scored photo of each k-means cluster of the
  shortlist, and at the start the most central photo of each cluster of the pool.

Prints the accuracy curves and the labels each strategy needed to reach given accuracies.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np

from salerank.image_labelling.active_learning import propose
from salerank.image_labelling.tagger import Backbone, ImageTagger, tagging_metrics

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "intel-scenes"


def load(folder: Path, backbone: Backbone, cache: Path | None):
    if cache and cache.exists():
        stored = np.load(cache)
        return stored["vectors"], stored["labels"]
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        paths += [str(f) for f in files]
        labels += [class_dir.name] * len(files)
    embedded = backbone.embed(paths)
    label_of = dict(zip(paths, labels))
    vectors, labels = embedded.vectors, np.array([label_of[p] for p in embedded.paths])
    if cache:
        np.savez(cache, vectors=vectors, labels=labels)
    return vectors, labels


def accuracy(train_x, train_y, test_x, test_y, seed):
    tagger = ImageTagger(seed=seed).fit(train_x, [{y} for y in train_y])
    probability = tagger.predict_proba(test_x)
    return tagger, tagging_metrics(probability, tagger.label_matrix([{y} for y in test_y]), tagger.tags_)["top1_accuracy"]


def choose(strategy, tagger, x, pool, n, rng, seed):
    if strategy == "random":
        return rng.choice(pool, n, replace=False)
    probability = tagger.predict_proba(x[pool]) if tagger is not None else None
    if strategy == "top-score" and probability is None:
        probability = np.full((len(pool), 1), 0.5)  # equal uncertainty: density decides
    best, _ = propose(probability, x[pool], n, candidates=1 if strategy == "top-score" else 5, seed=seed)
    return pool[best]


def run(strategy, x, y, test_x, test_y, first, rounds, batch, seed):
    rng = np.random.default_rng(seed)
    labelled = choose(strategy, None, x, np.arange(len(y)), first, rng, seed)
    curve = []
    for _ in range(rounds + 1):
        tagger, acc = accuracy(x[labelled], y[labelled], test_x, test_y, seed)
        curve.append((len(labelled), acc))
        pool = np.setdiff1d(np.arange(len(y)), labelled)
        labelled = np.concatenate([labelled, choose(strategy, tagger, x, pool, batch, rng, seed)])
    return curve


def labels_to_reach(curve, target):
    return next((n for n, acc in curve if acc >= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first", type=int, default=12, help="labels chosen before any tagger exists")
    parser.add_argument("--cache", help="keep the embeddings in this .npz prefix between runs")
    args = parser.parse_args()
    backbone = Backbone()
    cache = {part: Path(f"{args.cache}-{part}.npz") if args.cache else None for part in ("train", "test")}
    x, y = load(Path(args.data) / "train", backbone, cache["train"])
    test_x, test_y = load(Path(args.data) / "test", backbone, cache["test"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; pool {len(y)} photos, test {len(test_y)}")
    strategies = ("random", "top-score", "diverse")
    curves = {s: [run(s, x, y, test_x, test_y, args.first, args.rounds, args.batch, seed)
                  for seed in range(args.repeats)] for s in strategies}
    mean = {s: [(c[0][i][0], float(np.mean([cc[i][1] for cc in c]))) for i in range(args.rounds + 1)]
            for s, c in curves.items()}
    print("labels  " + "  ".join(f"{s:>9}" for s in strategies)
          + f"   (top-1 accuracy on test/, mean of {args.repeats} runs)")
    for i, (n, _) in enumerate(mean["random"]):
        print(f"{n:6d}  " + "  ".join(f"{mean[s][i][1]:9.4f}" for s in strategies))
    for target in (0.80, 0.85, 0.87, 0.88, 0.89):
        print(f"labels to reach {target:.2f}: "
              + ", ".join(f"{s} {labels_to_reach(mean[s], target)}" for s in strategies))


if __name__ == "__main__":
    main()
