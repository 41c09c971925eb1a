"""When does approximate search pay for ``similar_sales``? Exact against faiss, by catalogue size.

    python benchmarks/similar_sales.py [--cache OUT/image_cache] [--sizes 1000,4000,16000,32000]

For each number of open sales with photos: the exact search (``exact_neighbours``: blocks of
the open x open product) and the approximate one (``approximate_neighbours``: a faiss inverted
file, searching several numbers of its cells per sale), timed in the same run, and the approximate
one's recall of the exact 10 nearest. The embeddings are real photos' (the rank-1 rows of an
image cache written with ``image_labelling.visual_similarity: true``, e.g. an H&M backtest's),
each drawn once and then, past the cache's size, again with 5 % noise; without ``--cache``, a
mixture of 64 Gaussian clusters in 1280 dimensions.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from salerank.recommenders.visual import approximate_neighbours, exact_neighbours

PROBES = (8, 32, 128)  # cells searched per sale


def cached_embeddings(path: str) -> np.ndarray:
    """The embeddings of an image cache (a Parquet folder or URI pyarrow reads), one per photo."""
    import pyarrow.parquet as pq

    cache = pq.read_table(path, columns=["content_hash", "embedding"]).to_pandas()
    photos = cache.dropna(subset=["embedding"]).drop_duplicates("content_hash")  # one per photo
    return np.stack([np.frombuffer(b, dtype=np.float16) for b in photos["embedding"]]).astype(np.float64)


def mixture(n: int, rng: np.random.Generator, d: int = 1280, clusters: int = 64) -> np.ndarray:
    centres = rng.standard_normal((clusters, d))
    return centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, d))


def sample(base: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    if base is None:
        x = mixture(n, rng)
    else:
        x = base[rng.permutation(len(base))[:n]]
        if n > len(base):  # the rest: real photos again, jittered
            extra = base[rng.integers(0, len(base), n - len(base))]
            x = np.concatenate([x, extra + 0.05 * np.linalg.norm(extra, axis=1, keepdims=True)
                                / np.sqrt(base.shape[1]) * rng.standard_normal(extra.shape)])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="an image cache (Parquet) with embeddings")
    parser.add_argument("--sizes", default="1000,4000,16000,32000")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = cached_embeddings(args.cache) if args.cache else None
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; embeddings: "
          f"{'%d real photos' % len(base) if base is not None else 'Gaussian mixture'}")
    print("open sales | exact s | " + " | ".join(f"faiss {p} cells: s, recall, x faster" for p in PROBES))
    for n in map(int, args.sizes.split(",")):
        x = sample(base, n, rng)
        start = time.perf_counter()
        exact, _ = exact_neighbours(x, args.k)
        exact_s = time.perf_counter() - start
        cells = []
        for probes in PROBES:
            start = time.perf_counter()
            found, _ = approximate_neighbours(x, args.k, seed=0, probes=probes)
            seconds = time.perf_counter() - start
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact)])
            cells.append(f"{seconds:.2f}, {recall:.3f}, {exact_s / seconds:.1f}x")
        print(f"{n} | {exact_s:.2f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
