"""Training examples with negative sampling, and training of the meta-model.

For each day ``d`` of the training window, each purchase of a sale open on ``d`` is a
positive; up to ``negatives_per_purchase`` sales open on ``d`` that the user neither
bought that day nor before are negatives.  Every feature comes from
``ScoringContext.build(..., as_of=d)``: only events before ``d``.
"""
from __future__ import annotations

import datetime as dt
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from ..features.history import Catalog, ScoringContext, purchases_on
from ..features.loading import Tables
from ..recommenders import Recommender, fit_all
from ..recommenders.scoring import Block, released, score_users
from .calibration import calibration_check, day_pairs
from .evaluation import validation_ndcg
from .signals import rank_name, signals_from_config, with_ranks
from .model import MetaModel

log = logging.getLogger("salerank")


class TrainingDataError(ValueError):
    """There is not enough history before the date to train the meta-model."""


@dataclass(frozen=True)
class SampleExamples:
    """Emit positives and sampled negatives for the buyers of one day (``positives``).

    ``draw`` is the order in which a negative was drawn (0 for positives): keeping the
    negatives with ``draw < r * positives`` is a random sample at ratio ``r``.  ``ranked``
    names the scores whose within-user ranks are features, computed over every open sale
    before sampling (capped at ``rank_depth + 1`` when it is given).
    """

    day: dt.date
    negatives_per_purchase: int
    seed: int
    ranked: tuple[str, ...] = ()
    rank_depth: int | None = None

    def __call__(self, block: Block) -> pd.DataFrame:
        already_bought = block.history.bought[:, block.open_idx].toarray() > 0
        scores = with_ranks(block.scores, self.ranked, self.rank_depth)
        parts = []
        for row, (user, positives) in enumerate(zip(block.users["user_id"], block.users["positives"])):
            pos_cols = np.searchsorted(block.open_idx, np.sort(positives))
            allowed = ~already_bought[row]
            allowed[pos_cols] = False
            candidates = np.flatnonzero(allowed)
            rng = np.random.default_rng([self.seed, zlib.crc32(str(user).encode()), self.day.toordinal()])
            n_neg = min(len(candidates), self.negatives_per_purchase * len(pos_cols))
            drawn = rng.choice(candidates, size=n_neg, replace=False)
            order = np.argsort(drawn, kind="stable")
            cols = np.concatenate([pos_cols, drawn[order]])
            parts.append(pd.DataFrame({
                "user_id": user, "day": self.day, "sale_id": block.open_ids[cols],
                "label": np.r_[np.ones(len(pos_cols), int), np.zeros(n_neg, int)],
                "draw": np.r_[np.zeros(len(pos_cols), int), order.astype(int)],
                **{name: s[row, cols] for name, s in scores.items()},
            }))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["user_id", "day", "sale_id", "label", "draw", *scores])


def feature_names(scorers: list[Recommender], ranked: tuple[str, ...]) -> list[str]:
    """The meta-model's features: every scorer's score, then the within-user ranks."""
    return [s.name for s in scorers] + [rank_name(n) for n in ranked]


def examples_schema(scorers: list[Recommender], ranked: tuple[str, ...] = ()) -> str:
    return ", ".join(["user_id string", "day date", "sale_id string", "label int", "draw int"]
                     + [f"{name} double" for name in feature_names(scorers, ranked)])


def day_examples(tables: Tables, catalog: Catalog, scorers: list[Recommender], day: dt.date,
                 negatives_per_purchase: int, seed: int, partitions: int,
                 ranked: tuple[str, ...] = (), rank_depth: int | None = None) -> pd.DataFrame:
    """The labelled examples of one day: its purchases of open sales and sampled negatives,
    scored with recommenders and signals fitted on what was known at the start of ``day``."""
    context = ScoringContext.build(tables, catalog, day)
    if len(context.open_idx) == 0:
        return pd.DataFrame(columns=["user_id", "day", "sale_id", "label", "draw",
                                     *feature_names(scorers, ranked)])
    buyers = (purchases_on(tables, catalog, day)
              .groupBy("user_id").agg(F.array_sort(F.collect_set("sale_idx")).alias("positives")))
    fitted = fit_all(scorers, context)
    emit = SampleExamples(day, negatives_per_purchase, seed, ranked, rank_depth)
    with released():  # the day's fitted state is not needed once its examples are collected
        return score_users(context, fitted, buyers, emit, examples_schema(scorers, ranked),
                           partitions).toPandas()


def training_examples(tables: Tables, catalog: Catalog, scorers: list[Recommender],
                      as_of: dt.date, train_days: int, negatives_per_purchase: int, seed: int,
                      partitions: int, cache: dict | None = None,
                      ranked: tuple[str, ...] = (), rank_depth: int | None = None) -> pd.DataFrame:
    """Labelled examples for the ``train_days`` days before ``as_of``, features point-in-time.

    A day's examples do not depend on ``as_of``: a backtest passes the same ``cache`` dict
    for every date so that each day is computed once.
    """
    cache = {} if cache is None else cache
    frames = []
    for offset in range(train_days, 0, -1):
        day = as_of - dt.timedelta(days=offset)
        if day not in cache:
            cache[day] = day_examples(tables, catalog, scorers, day, negatives_per_purchase,
                                      seed, partitions, ranked, rank_depth)
        frames.append(cache[day])
    filled = [f for f in frames if len(f)]
    examples = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=["label"])
    if not len(examples) or examples["label"].sum() == 0:
        raise TrainingDataError(
            f"no purchases of open sales in the {train_days} days before {as_of}: the meta-model "
            "has nothing to learn from (set metamodel.train_days higher, or check purchases.ts)")
    return examples.sort_values(["day", "user_id", "label", "sale_id"],
                                ascending=[True, True, False, True], kind="stable").reset_index(drop=True)


def subsample_negatives(examples: pd.DataFrame, ratio: int) -> pd.DataFrame:
    """The positives and, per user and day, a random ``ratio`` negatives per positive."""
    positives = examples.groupby(["user_id", "day"])["label"].transform("sum")
    return examples[(examples["label"] == 1) | (examples["draw"] < ratio * positives)]


def reliability(probability: np.ndarray, labels: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Calibration: per bin of predicted probability, the mean prediction, the observed
    purchase rate and the number of examples (empty bins left out)."""
    which = np.minimum((probability * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": which, "predicted": probability, "observed": labels})
    table = frame.groupby("bin").agg(predicted=("predicted", "mean"), observed=("observed", "mean"),
                                     examples=("observed", "size"))
    table.index = [f"{b / bins:.1f}-{(b + 1) / bins:.1f}" for b in table.index]
    return table


def validation_split(examples: pd.DataFrame, validation_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The examples before the validation days, and those of the validation days: the last
    ``validation_days`` days that have examples (the last one when there are no more days
    than that)."""
    days = sorted(examples["day"].unique())
    held = days[-validation_days:] if len(days) > validation_days else days[-1:]
    chosen = examples["day"].isin(held)
    return examples[~chosen], examples[chosen]


def train_metamodel(examples: pd.DataFrame, features: list[str], ranked: tuple[str, ...] = (),
                    C: tuple[float, ...] = (1.0,), negative_ratios: tuple[int, ...] = (5,),
                    validation_days: int = 1, rank_depth: int | None = None,
                    k: int = 10, kind: str = "logistic") -> tuple[MetaModel, dict, dict]:
    """Choose ``C`` and the negatives ratio on a validation period, then fit on every day.

    The last ``validation_days`` days are the validation period (:func:`validation_split`):
    each candidate is fitted on the days before it and scored by what the night is judged by,
    a per-user ranking metric: NDCG@``k`` over the validation days' (user, day) lists, with
    every sampled negative so that ratios compare fairly (``evaluation.validation_ndcg``). The
    best (ties: smaller C, then smaller ratio) is refitted on all days. Pooled AUC and log loss
    are reported beside it: AUC mixes users, and a model can raise it by ranking buyers above
    each other without ranking any one user's sales better. With too little data to validate,
    the largest ratio and the middle C are used.

    Returns the model, its metrics, and a report: the validation grid and the reliability
    table of the chosen candidate on the validation period.
    """
    earlier, validation = validation_split(examples, validation_days)
    metrics = {"train_examples": float(len(examples)), "train_positives": float(examples["label"].sum()),
               "train_days": float(examples["day"].nunique())}
    choice, grid, report = (sorted(C)[len(C) // 2], max(negative_ratios)), [], {}
    if earlier["label"].nunique() == 2 and validation["label"].nunique() == 2:
        for ratio in sorted(negative_ratios):
            sample = subsample_negatives(earlier, ratio)
            for c in sorted(C):
                candidate = MetaModel(features, c, ranked, rank_depth, kind).fit(sample)
                ndcg, _ = validation_ndcg(candidate, validation, k)
                grid.append({"C": c, "negative_ratio": ratio, "ndcg": ndcg, **candidate.evaluate(validation)})
        best = max(grid, key=lambda r: (round(r["ndcg"], 9), -r["C"], -r["negative_ratio"]))
        choice = (best["C"], best["negative_ratio"])
        metrics.update({"validation_ndcg": best["ndcg"], "validation_auc": best["auc"],
                        "validation_log_loss": best["log_loss"]})
        chosen = MetaModel(features, choice[0], ranked, rank_depth, kind).fit(subsample_negatives(earlier, choice[1]))
        report["reliability"] = reliability(
            chosen.predict_proba(validation[chosen.feature_names].to_numpy(dtype=float)),
            validation["label"].to_numpy())
    report["grid"] = grid
    metrics.update({"chosen_C": float(choice[0]), "chosen_negative_ratio": float(choice[1])})
    model = MetaModel(features, choice[0], ranked, rank_depth, kind).fit(subsample_negatives(examples, choice[1]))
    metrics.update({f"train_{name}": v for name, v in model.evaluate(examples).items()})
    return model, metrics, report


def _candidates(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _tuned(examples, features, ranked, settings: dict, k: int):
    """:func:`train_metamodel` with the grid and options of ``settings`` (``config['metamodel']``)."""
    return train_metamodel(examples, features, ranked, _candidates(settings["C"]),
                           _candidates(settings["negative_ratios"]), settings["validation_days"],
                           settings["rank_depth"], k, settings["kind"])


def fit_metamodel(tables, catalog, prototypes, as_of, config, cache: dict | None = None):
    """The meta-model for ``as_of``, trained on the days before it: the model, its metrics
    and the tuning report (validation grid, reliability table)."""
    settings = config["metamodel"]
    scorers = prototypes + signals_from_config(config)
    ranked = tuple(r.name for r in prototypes) if settings["ranks"] else ()
    examples = training_examples(tables, catalog, scorers, as_of, settings["train_days"],
                                 settings["negatives_per_purchase"], config["seed"],
                                 config["spark"]["scoring_partitions"], cache, ranked,
                                 settings["rank_depth"])
    features = feature_names(scorers, ranked)
    model, metrics, report = _tuned(examples, features, ranked, settings, config["top_k"])
    validation = [as_of - dt.timedelta(days=d) for d in range(settings["validation_days"], 0, -1)]
    pairs = calibration_pairs(tables, catalog, scorers, features, validation, config, cache)
    model.calibrate(pairs)
    check, report["calibration"] = calibration_check(model.probability(
        model.log_odds(pairs[features].to_numpy(dtype=float))), pairs)
    metrics.update({"calibration_slope": model.calibration_[0], "calibration_intercept": model.calibration_[1],
                    "calibration_pairs": check["pairs"], "calibration_purchases": check["observed_purchases"]})
    shared = [s for s in scorers if not s.personal]
    if shared:
        model.fallback_, fallback_metrics = fit_fallback(examples, shared, ranked, pairs, settings, config["top_k"])
        metrics.update(fallback_metrics)
    log.info("meta-model %s trained on %d examples: %s", model.version_, len(examples),
             ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return model, metrics, report


def fit_fallback(examples: pd.DataFrame, shared: list[Recommender], ranked: tuple[str, ...],
                 pairs: pd.DataFrame, settings: dict, k: int) -> tuple[MetaModel, dict]:
    """The non-personal meta-model: the same kind, examples, tuning and calibration as the
    meta-model, on the features that are the same for every user (popularity, the sales'
    days open and audience, ...). It ranks the fallback list of a user with no history: the
    full meta-model's weights are learnt where personal scores carry the ranking, and given
    none (every sale tied first on each personal rank) they ranked worse than popularity
    alone on the world. Its probability is calibrated on the same pairs, those of the active
    users: what an active user does with that list, not a measured rate of new users. Returns
    it with its metrics (``fallback_*``)."""
    names = {s.name for s in shared}
    shared_ranked = tuple(n for n in ranked if n in names)
    features = feature_names(shared, shared_ranked)
    fallback, metrics, _ = _tuned(examples, features, shared_ranked, settings, k)
    fallback.calibrate(pairs)
    kept = ("validation_ndcg", "validation_auc", "chosen_C", "chosen_negative_ratio")
    return fallback, {f"fallback_{name}": metrics[name] for name in kept if name in metrics}


PAIRS = "pairs"  # cache key ``(PAIRS, day)``: a day's calibration pairs; a plain day: its examples


def cached_day(key) -> dt.date:
    """The day of an entry of the cache that :func:`fit_metamodel` fills."""
    return key[-1] if isinstance(key, tuple) else key


def calibration_pairs(tables, catalog, scorers, features, days, config, cache: dict | None = None):
    """The unsampled pairs of ``days`` (``metamodel/calibration.py``): they calibrate the
    meta-model on its validation days, and measure it on a backtest's days. A day's pairs do not
    depend on the model and are kept in ``cache`` like its training examples."""
    settings, cache = config["metamodel"], {} if cache is None else cache
    ranked = tuple(n for n in (r.name for r in scorers) if rank_name(n) in features)
    frames = []
    for day in days:
        if (PAIRS, day) not in cache:
            cache[(PAIRS, day)] = day_pairs(
                tables, catalog, scorers, features, day, config["active_lookback_days"],
                settings["calibration_pairs"], config["seed"], config["spark"]["scoring_partitions"],
                ranked, settings["rank_depth"])
        frames.append(cache[(PAIRS, day)])
    return pd.concat(frames, ignore_index=True)
