"""How many hand labels active learning saves against random choice, on intel-scenes.

    python benchmarks/active_learning_intel_scenes.py [--rounds 12] [--batch 24] [--repeats 3]

Starts from 2 labelled photos per scene, then in each round labels ``batch`` more photos of
``train/`` chosen either at random or by :func:`salerank.image_labelling.active_learning.propose`,
retrains the head and measures top-1 accuracy on ``test/``.  Prints the accuracy curves and
the labels each strategy needed to reach given accuracies.
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


def load(folder: Path, backbone: Backbone):
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        paths += [str(f) for f in files]
        labels += [class_dir.name] * len(files)
    embedded = backbone.embed(paths)
    label_of = dict(zip(paths, labels))
    return embedded.vectors, np.array([label_of[p] for p in embedded.paths])


def accuracy(train_x, train_y, test_x, test_y, seed):
    tagger = ImageTagger(seed=seed).fit(train_x, [{y} for y in train_y])
    probability = tagger.predict_proba(test_x)
    return tagger, tagging_metrics(probability, tagger.label_matrix([{y} for y in test_y]), tagger.tags_)["top1_accuracy"]


def run(strategy, x, y, test_x, test_y, rounds, batch, seed):
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), 2, replace=False) for c in np.unique(y)])
    curve = []
    for _ in range(rounds + 1):
        tagger, acc = accuracy(x[labelled], y[labelled], test_x, test_y, seed)
        curve.append((len(labelled), acc))
        pool = np.setdiff1d(np.arange(len(y)), labelled)
        if strategy == "random":
            chosen = rng.choice(pool, batch, replace=False)
        else:
            best, _ = propose(tagger.predict_proba(x[pool]), x[pool], batch, seed=seed)
            chosen = pool[best]
        labelled = np.concatenate([labelled, chosen])
    return curve


def labels_to_reach(curve, target):
    return next((n for n, acc in curve if acc >= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    backbone = Backbone()
    x, y = load(Path(args.data) / "train", backbone)
    test_x, test_y = load(Path(args.data) / "test", backbone)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; pool {len(y)} photos, test {len(test_y)}")
    curves = {s: [run(s, x, y, test_x, test_y, args.rounds, args.batch, seed) for seed in range(args.repeats)]
              for s in ("random", "active")}
    mean = {s: [(c[0][i][0], float(np.mean([cc[i][1] for cc in c]))) for i in range(args.rounds + 1)]
            for s, c in curves.items()}
    print("labels  random  active   (top-1 accuracy on test/, mean of %d runs)" % args.repeats)
    for (n, r), (_, a) in zip(mean["random"], mean["active"]):
        print(f"{n:6d}  {r:.4f}  {a:.4f}")
    for target in (0.85, 0.87, 0.88, 0.89):
        print(f"labels to reach {target:.2f}: random {labels_to_reach(mean['random'], target)}, "
              f"active {labels_to_reach(mean['active'], target)}")


if __name__ == "__main__":
    main()
