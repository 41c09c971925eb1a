"""Per-row kernels of the night's ranking, compiled by numba: each user's best ``d`` sales
found in one or two passes over the row, instead of numpy's partition, argsort and gathers
over the whole block (measured by ``benchmarks/ties.py``; ``benchmarks/README.md``).

The top ``k`` (10) of a row is kept in a heap of ``k`` as the row is read. The best ``depth``
(100) for the rank features come from a bar, a value with between ``depth`` and ``1.5 depth``
scores at or above it, found by counting passes; then only those are sorted. Ties (a sparse
score whose ``depth``-th best is 0, a score of a few values) can leave no such bar: that row
goes through the heap instead, which ties make cheap. Either way the result is exact: ranks
are the "min" ranks of ties, and ties in the top ``k`` go to the lower column.

Compiled at first use in each process; cached on disk next to this file when it is a real
file (not inside a zipped wheel shipped with ``--py-files``, where numba cannot cache).
"""
from __future__ import annotations

import os

import numba
import numpy as np

def _jit(function=None, **options):
    """``numba.njit``, cached on disk where numba finds a writable place for this file (next
    to it, or the user's cache folder), else compiled afresh in each process: never an error
    at import, wherever salerank is installed (a read-only image, a zipped wheel)."""
    if function is None:
        return lambda f: _jit(f, **options)
    try:
        return numba.njit(nogil=True, cache=os.path.isfile(__file__), **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, cache=False, **options)(function)


@_jit(inline="always")
def _worse(value_a, column_a, value_b, column_b):
    """(value_a, column_a) ranks below (value_b, column_b): a lower value, or the same
    value at a higher column."""
    return value_a < value_b or (value_a == value_b and column_a > column_b)


@_jit
def _sift_down(values, columns, pos, size):
    value, column = values[pos], columns[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(values[child + 1], columns[child + 1], values[child], columns[child]):
            child += 1
        if not _worse(values[child], columns[child], value, column):
            break
        values[pos], columns[pos] = values[child], columns[child]
        pos = child
    values[pos], columns[pos] = value, column


@_jit
def _best_by_heap(row, d, values, columns):
    """The row's best ``d`` (value, column) into ``values``, ``columns``, best first; ties
    go to the lower column."""
    for j in range(d):
        values[j], columns[j] = row[j], j
    for pos in range(d // 2 - 1, -1, -1):
        _sift_down(values, columns, pos, d)
    for j in range(d, row.shape[0]):
        if row[j] > values[0]:  # an equal value at a higher column ranks below the least kept
            values[0], columns[0] = row[j], j
            _sift_down(values, columns, 0, d)
    for size in range(d - 1, 0, -1):  # heap sort: the least goes last
        values[0], values[size] = values[size], values[0]
        columns[0], columns[size] = columns[size], columns[0]
        _sift_down(values, columns, 0, size)


@_jit
def _at_least(row, bar):
    count = 0
    for j in range(row.shape[0]):
        count += row[j] >= bar
    return count


@_jit
def _bar(row, d, most):
    """A value with ``d`` to ``most`` of the row at or above it, by bisection of counts;
    NaN if ties leave none (``most > d``, finite row)."""
    low, high = row.min(), row.max()
    if low == high:
        return np.nan
    if row.shape[0] > most and _at_least(row, np.nextafter(low, np.inf)) < d:
        return np.nan  # fewer than d above the row's least (a sparse score): every bar holds them all
    below, above = low, high  # at least d at or above ``below``; fewer than d above ``above``
    bar = high - (high - low) * (1.2 * d / row.shape[0])  # where it is if scores were uniform
    for _ in range(64):
        count = _at_least(row, bar)
        if count < d:
            above = bar
        elif count <= most:
            return bar
        else:
            below = bar
        middle = 0.5 * (below + above)
        if middle == below or middle == above:
            break
        bar = middle
    return np.nan


@_jit
def _best(row, d, values, columns, keys, indices):
    """The row's best ``d`` (value, column), best first, ties to the lower column; by a bar
    where there is one, else by a heap."""
    m = row.shape[0]
    bar = _bar(row, d, d + d // 2)
    if np.isnan(bar):
        _best_by_heap(row, d, values, columns)
        return
    count = 0
    for j in range(m):  # column order, so that a stable sort breaks ties by column
        if row[j] >= bar:
            keys[count], indices[count] = -row[j], j
            count += 1
    order = np.argsort(keys[:count], kind="mergesort")
    for q in range(d):
        values[q], columns[q] = -keys[order[q]], indices[order[q]]


@_jit
def top_k_rows(scores, k):
    """Columns of the ``k`` highest of each row (``k`` < columns), best first, ties to the
    lower column; NaN counts as -inf."""
    n, m = scores.shape
    cols = np.empty((n, k), np.int64)
    row, values = np.empty(m, np.float64), np.empty(k, np.float64)
    for i in range(n):
        for j in range(m):
            row[j] = -np.inf if np.isnan(scores[i, j]) else scores[i, j]
        _best_by_heap(row, k, values, cols[i])  # a heap of 10 beats any bar (measured)
    return cols


@_jit
def add_rank_lookup_rows(out, scores, table, depth):
    """``out[i, j] += table[min(rank, depth + 1)]`` for the "min" rank of ``scores[i, j]``
    within its row (1 = highest; finite scores, ``depth`` < columns)."""
    n, m = scores.shape
    values, columns = np.empty(depth, np.float64), np.empty(depth, np.int64)
    keys, indices = np.empty(m, np.float64), np.empty(m, np.int64)
    beyond = table[depth + 1]
    for i in range(n):
        row, row_out = scores[i], out[i]
        _best(row, depth, values, columns, keys, indices)
        last = values[depth - 1]  # every sale at this value ranks just after those above it
        above = 0
        while values[above] > last:
            above += 1
        at_last = table[above + 1]
        for j in range(m):
            if row[j] < last:
                row_out[j] += beyond
            elif row[j] == last:
                row_out[j] += at_last
        rank = 1
        for q in range(above):
            if q and values[q] != values[q - 1]:
                rank = q + 1
            row_out[columns[q]] += table[rank]
    return out
