"""Score users per partition, in blocks, against the sales open on a day.

The fitted recommenders and the open sales are broadcast; each partition of users turns
its users' histories into sparse matrices and asks every recommender for a dense
``users x open sales`` block.  What is done with the blocks (training examples, top-k)
is the ``emit`` function's business, so training and nightly scoring share this path.
"""
from __future__ import annotations

import ctypes
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema

from ..features.history import ScoringContext
from .base import Recommender, UserHistory

log = logging.getLogger("salerank")


@dataclass(frozen=True)
class Block:
    """A block of users scored against the open sales."""

    users: pd.DataFrame  # the input rows without the history columns (user_id and any extra columns)
    history: UserHistory
    scores: dict[str, np.ndarray]  # recommender name -> users x open sales
    open_idx: np.ndarray
    open_ids: np.ndarray  # sale_id of each open sale (column order)
    # lap("step"): the emit's time since its previous lap goes to that step (see EMIT_STEPS)
    lap: Callable[[str], None] = lambda step: None


# the rows of a block: a pandas DataFrame, or an Arrow table (cheaper for many string rows).
# An emit may name its steps in an ``steps`` attribute and time them with ``block.lap``; the
# time after its last lap goes to its last step. Without ``steps`` it is one step, "emit".
Emit = Callable[[Block], "pd.DataFrame | pa.Table"]
EMIT_STEPS = ("emit",)

# Users x open sales cells scored together: 8 MB per dense float64 array, so a task's
# memory is bounded by the block (a few dozen such arrays), not by its users. Measured at
# 100k users x 1,000 open sales: 0.25M-1M cells scored 5-7 % faster than 2.5M (the passes
# stay closer to the cache); smaller blocks pay more per-block Python.
BLOCK_CELLS = 1_000_000

_RELEASED: list[list] = []  # the broadcasts made in each open ``released`` block, innermost last


@contextmanager
def released():
    """Destroy, on leaving the block (on failure as on success), the broadcast state of every
    frame ``score_users`` returned inside it: a night or a backtest day, or one day's training
    examples. Those frames, and anything cached from them, must not be used after it.

    Without it a broadcast (the fitted recommenders, pickled on the driver and copied to every
    executor) lives until Python and the JVM collect it: one per scored day, in a backtest.
    """
    made: list = []
    _RELEASED.append(made)
    try:
        yield
    finally:
        _RELEASED.remove(made)
        for shared in made:
            try:
                shared.destroy()
            except Exception as err:  # a failed clean-up must not hide the block's own error
                log.warning("a scoring broadcast could not be destroyed: %s", err)


def score_users(context: ScoringContext, recommenders: list[Recommender], users: DataFrame,
                emit: Emit, schema: str, partitions: int, timers: dict | None = None,
                block_cells: int = BLOCK_CELLS) -> DataFrame:
    """Apply ``emit`` to every block of ``users`` scored by the fitted ``recommenders``.

    The fitted recommenders are broadcast; the broadcast is destroyed on leaving the
    enclosing ``released()`` block, if any.

    Parameters
    ----------
    users : DataFrame
        One row per ``user_id`` (extra columns are passed through to ``emit``).
    emit : callable
        ``Block -> pandas.DataFrame or pyarrow.Table`` matching ``schema``.
    timers : dict, optional
        Filled with a Spark accumulator per step (``histories``, each recommender, and the
        emit's ``steps`` or ``emit``):
        the seconds the executors spent in it, summed over tasks, once an action has run.
    block_cells : int
        Users x open sales scored at once (the Arrow batches are cut to this size).
    """
    spark = users.sparkSession
    emit_steps = tuple(getattr(emit, "steps", EMIT_STEPS))
    steps = ["histories", *[r.name for r in recommenders], *emit_steps]
    clocks = {step: spark.sparkContext.accumulator(0.0) for step in steps}
    if timers is not None:
        timers.update(clocks)
    histories = context.user_histories(users, partitions)
    widths = {}
    for r in recommenders:
        if (state := r.user_state()) is not None:
            histories = histories.join(_state_frame(spark, r.name, *state), "user_id", "left")
            widths[r.name] = state[1].shape[1]
    history_columns = ["items", "bought", "age_days", "visits", "visit_age_days",
                       *[_state_column(name) for name in widths]]
    shared = spark.sparkContext.broadcast({
        "recommenders": recommenders, "emit": emit, "open_idx": context.open_idx,
        "open_ids": context.catalog.sale_ids(context.open_idx), "n_sales": len(context.catalog),
        "widths": widths, "history_columns": history_columns,
        "schema": to_arrow_schema(spark.createDataFrame([], schema).schema),
    })
    if _RELEASED:
        _RELEASED[-1].append(shared)

    # Arrow batches in and out (mapInArrow): the histories' list columns become CSR matrices
    # from their offsets, and rows go back without a Python object per user or per row
    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _keep_freed_memory()
        state = shared.value
        block_users = max(1, block_cells // max(1, len(state["open_idx"])))
        for arrow_batch in batches:
            for lo in range(0, arrow_batch.num_rows, block_users):
                yield from score_block(state, arrow_batch.slice(lo, block_users))

    def score_block(state: dict, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        start = time.perf_counter()

        def lap(step: str) -> None:
            """The time since the previous lap goes to ``step``."""
            nonlocal start
            now = time.perf_counter()
            clocks[step].add(now - start)
            start = now

        states = {name: _stack(batch.column(_state_column(name)), width)
                  for name, width in state["widths"].items()}
        history = UserHistory.from_arrow(batch.column("items"), batch.column("bought"), state["n_sales"],
                                         batch.column("age_days"), states, batch.column("visits"),
                                         batch.column("visit_age_days"))
        users = batch.drop_columns(state["history_columns"]).to_pandas()
        lap("histories")
        scores = {}
        for r in state["recommenders"]:
            scores[r.name] = r.score(history)
            lap(r.name)
        out = state["emit"](Block(users, history, scores, state["open_idx"], state["open_ids"], lap))
        if isinstance(out, pd.DataFrame):
            out = pa.Table.from_pandas(out, schema=state["schema"], preserve_index=False)
        out = out.cast(state["schema"]).combine_chunks()
        lap(emit_steps[-1])
        yield from out.to_batches()

    # sorted within the partition, so that its Arrow batches and blocks hold the same users
    # on every run whatever order the shuffle delivers them in (BLAS sums depend on shape);
    # the histories are already partitioned so, and Spark plans no second shuffle for it:
    # this states what scoring relies on, whatever the state joins above were planned as
    histories = histories.repartition(partitions, "user_id").sortWithinPartitions("user_id")
    return histories.mapInArrow(score_partition, schema)


def _state_column(name: str) -> str:
    return f"state_{name}"


def _state_frame(spark, name: str, user_ids: np.ndarray, rows: np.ndarray) -> DataFrame:
    """``user_id`` and each user's row of state as ``array<float>``, built from Arrow
    buffers (no Python object per user)."""
    import pyarrow as pa

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    offsets = pa.array(np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(rows.ravel()))
    table = pa.table({"user_id": pa.array(user_ids.astype(str)), _state_column(name): column})
    return spark.createDataFrame(table, f"user_id string, {_state_column(name)} array<float>")


def _stack(column: pa.ListArray, width: int) -> np.ndarray:
    """The joined rows of state as a ``users x width`` array; zeros where a user had none."""
    out = np.zeros((len(column), width), dtype=np.float32)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    if present.any():
        out[present] = column.flatten().to_numpy().reshape(-1, width)
    return out


def _keep_freed_memory() -> None:
    """Let this worker's allocator reuse the memory a block frees for the next block.

    A block's arrays (8 MB each at ``BLOCK_CELLS``) are above glibc's threshold for mapping
    memory afresh, so every one was returned to the system when freed and page-faulted in
    again: about 17,000 faults per block of 2.5M cells, a quarter of the meta-model's time.
    Raising the thresholds keeps them in the heap; the worker's memory stays at its peak for
    one block, which bounds it anyway.
    Other C libraries are left as they are.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
