"""Business rules a website asks for, applied to every list after scoring (``rules`` in the
configuration): sales never to recommend, sales to promote, and at most N sales of one
destination or category in a list.

A boost multiplies the meta-model's odds of the sale by its factor (at the small probabilities
of a purchase, its probability); the published score stays the calibrated probability, so a
boosted sale may rank above one with a higher score. Single recommenders' lists take the
exclusions and caps but no boost (their scores are not probabilities). The caps pick, in score
order, each sale whose groups are not yet full: the list is the best one that honours them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger("salerank")

CAPPED = {"max_per_destination": "destination", "max_per_category": "category"}


@dataclass(frozen=True)
class Rules:
    """The rules for the open sales of one day (arrays in ``open_idx`` order)."""

    excluded: np.ndarray  # bool: never recommended
    log_boost: np.ndarray  # added to the meta-model's log-odds (0: no boost)
    groups: tuple[np.ndarray, ...]  # per cap: each open sale's group (-1: none, never capped)
    caps: tuple[int, ...]

    @classmethod
    def from_config(cls, settings: dict, open_sales: pd.DataFrame, slope: float = 1.0) -> Rules | None:
        """The rules of ``settings`` (``config['rules']``) for ``open_sales`` (the catalogue's
        rows of the open sales, in column order); None when no rule is set. ``slope``: the
        meta-model's calibration slope, so that a factor multiplies the published odds (the
        published log-odds are ``slope * z + intercept``)."""
        ids = open_sales["sale_id"].astype(str).to_numpy()
        excluded = np.isin(ids, [str(s) for s in settings["exclude_sales"]])
        factors = {str(s): float(f) for s, f in (settings["boost_sales"] or {}).items()}
        log_boost = np.array([np.log(factors.get(s, 1.0)) for s in ids]) / (slope if slope > 0 else 1.0)
        unknown = sorted((set(map(str, settings["exclude_sales"])) | set(factors)) - set(ids))
        if unknown:  # closed, not open yet, or a YAML id read as a number (quote ids such as "0100")
            log.warning("rules: %d excluded or boosted sales are not open today, e.g. %r (quote ids "
                        "in YAML: 0100 unquoted is a number)", len(unknown), unknown[0])
        groups, caps = [], []
        for key, column in CAPPED.items():
            if settings[key] is not None and column in open_sales.columns:
                codes, _ = pd.factorize(open_sales[column].to_numpy(), use_na_sentinel=True)
                groups.append(codes.astype(np.int64))
                caps.append(int(settings[key]))
        if not excluded.any() and not log_boost.any() and not caps:
            return None
        return cls(excluded, log_boost, tuple(groups), tuple(caps))

    def select(self, scores: np.ndarray, bought_cells: tuple[np.ndarray, np.ndarray], k: int,
               boosted: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each row's best ``k`` columns under the rules (``scores``: users x open sales, changed
        in place; ``bought_cells``: what each user bought, never listed); their scores, -inf
        where a row has fewer than ``k``. With ``boosted``, the ranking adds the boosts and the
        scores returned are without them."""
        from .ranking import top_k  # ranking imports this module

        if boosted:
            scores += self.log_boost
        scores[bought_cells] = -np.inf
        scores[:, self.excluded] = -np.inf
        if not self.caps:
            cols = top_k(scores, k)
            best = np.take_along_axis(scores, cols, axis=1)
        else:
            m = scores.shape[1]
            depth = min(m, 4 * k)
            cols, best = self._capped(scores, top_k(scores, depth), k)
            short = np.flatnonzero(~np.isfinite(best).all(axis=1)) if depth < m else np.zeros(0, int)
            if len(short):  # the caps used up the first 4k: those rows again, over every sale
                cols[short], best[short] = self._capped(scores[short], top_k(scores[short], m), k)
        if boosted:  # ranked with the boost, published without it
            best = best - self.log_boost[cols]
        return cols, best

    def _capped(self, scores: np.ndarray, order: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Walk each row's ``order`` (best first), keeping a sale while the row has fewer than
        ``k`` and each of its groups fewer than its cap: one vectorised step per position."""
        n = len(order)
        rows = np.arange(n)
        counts = [np.zeros((n, g.max(initial=-1) + 2), np.int32) for g in self.groups]  # last: no group
        chosen = np.zeros(n, np.int32)
        cols = np.zeros((n, k), np.int64)
        best = np.full((n, k), -np.inf)
        for j in range(order.shape[1]):
            column = order[:, j]
            value = scores[rows, column]
            ok = np.isfinite(value) & (chosen < k)
            for group, count, cap in zip(self.groups, counts, self.caps):
                g = group[column]
                ok &= (g < 0) | (count[rows, g] < cap)
            kept = rows[ok]
            cols[kept, chosen[kept]] = column[kept]
            best[kept, chosen[kept]] = value[kept]
            for group, count in zip(self.groups, counts):
                g = group[column[kept]]
                count[kept[g >= 0], g[g >= 0]] += 1
            chosen[kept] += 1
        return cols, best
