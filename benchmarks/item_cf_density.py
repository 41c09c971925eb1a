"""What item-CF's scoring costs when co-visitation is dense (issue 18)

    python benchmarks/item_cf_density.py [--users 10000] [--catalogue 5148] [--open 1001]

Item-CF scores a block of users as ``histories (users x catalogue, sparse) @ similarity
(catalogue x open, ``neighbours`` per open sale)``. Two similarity matrices of the same size:
``uniform``, each open sale's neighbours drawn uniformly from the catalogue (the skewed world:
a past sale is the neighbour of about ``neighbours`` open sales), and ``zipf``, drawn by a Zipf
law over the sales' popularity, as are the histories (the Zipf world: popular sales are
everyone's neighbours and everyone's history, so each row of the product is dense). Times the
sparse product made dense, as ``ItemCF.score`` does, against the histories times the
similarity's non-empty rows as a dense array, on one thread; prints both, their ratio, and the
density of those rows.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ties import best_of


def zipf_weights(rng, n: int, exponent: float = 1.1) -> np.ndarray:
    weight = 1.0 / (1 + rng.permutation(n)) ** exponent
    return weight / weight.sum()


def similarity(rng, catalogue: int, n_open: int, neighbours: int, p) -> sp.csr_matrix:
    rows = np.concatenate([rng.choice(catalogue, size=neighbours, replace=False, p=p) for _ in range(n_open)])
    cols = np.repeat(np.arange(n_open), neighbours)
    return sp.csr_matrix((rng.random(len(rows)), (rows, cols)), shape=(catalogue, n_open))


def histories(rng, users: int, catalogue: int, visits: float, p) -> sp.csr_matrix:
    counts = rng.poisson(visits, size=users)
    rows = np.repeat(np.arange(users), counts)
    cols = rng.choice(catalogue, size=len(rows), p=p)
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(users, catalogue))
    matrix.sum_duplicates()
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--catalogue", type=int, default=5148)
    parser.add_argument("--open", type=int, default=1001)
    parser.add_argument("--neighbours", type=int, default=100)
    parser.add_argument("--visits", type=float, default=8.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.users} users x {args.open} open sales, "
          f"catalogue {args.catalogue}, {args.neighbours} neighbours, {args.visits} visits per user")
    for world in ("uniform", "zipf"):
        p = None if world == "uniform" else zipf_weights(rng, args.catalogue)
        s = similarity(rng, args.catalogue, args.open, args.neighbours, p)
        w = histories(rng, args.users, args.catalogue, args.visits, p)
        rows = np.flatnonzero(np.diff(s.indptr))
        dense = s[rows].toarray()
        expected = (w @ s).toarray()
        np.testing.assert_allclose(w[:, rows] @ dense, expected, rtol=1e-12, atol=1e-12)
        with threadpool_limits(1):
            sparse_s = best_of(lambda: (w @ s).toarray())
            dense_s = best_of(lambda: w[:, rows] @ dense)
        density = s.nnz / (len(rows) * args.open)
        output = (w @ s).nnz / (args.users * args.open)
        print(f"{world:8s} similarity rows used {len(rows)}, their density {density:.3f}; product density "
              f"{output:.3f}; sparse product {sparse_s * 1e3:.1f} ms, dense rows {dense_s * 1e3:.1f} ms, "
              f"sparse / dense {sparse_s / dense_s:.2f}x")


if __name__ == "__main__":
    main()
