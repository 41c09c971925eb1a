"""Does the cost of a block's ranking depend on how its scores tie? (issue 18)

    python benchmarks/ties.py [--users 2500] [--sales 1000]

Times, on one users x open-sales block, ``top_k`` (the top 10 of every strategy) and
``add_rank_lookup`` (the meta-model's rank features, depth 100) for scores that never tie
(continuous, as ALS), that tie at the k-th or the depth (coarse: content-like scores on three
values; sparse: item-CF-like, about 30 non-zero sales per user, the rest tied at 0) and one
value throughout; prints each as a ratio to the continuous block, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from salerank.metamodel.ranking import top_k
from salerank.metamodel.signals import add_rank_lookup


def blocks(users: int, sales: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sparse = np.where(rng.random((users, sales)) < 30 / sales, rng.random((users, sales)), 0.0)
    return {"continuous": rng.random((users, sales)), "coarse": rng.integers(0, 3, (users, sales)).astype(float),
            "sparse": sparse, "one value": np.zeros((users, sales))}


def best_of(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2500)
    parser.add_argument("--sales", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; block {args.users} x {args.sales}")
    table = np.log1p(np.arange(args.sales + 1, dtype=float))
    out = np.zeros((args.users, args.sales))
    timings = {name: (best_of(lambda: top_k(scores, 10)), best_of(lambda: add_rank_lookup(out, scores, table, 100)))
               for name, scores in blocks(args.users, args.sales).items()}
    base = timings["continuous"]
    print("scores | top_k ms (x continuous) | rank features ms (x continuous)")
    for name, (k, ranks) in timings.items():
        print(f"{name} | {k * 1e3:.1f} ({k / base[0]:.2f}x) | {ranks * 1e3:.1f} ({ranks / base[1]:.2f}x)")


if __name__ == "__main__":
    main()
