"""The meta-model: a logistic regression on the recommenders' scores (or, as an alternative
to compare, gradient-boosted trees on the same features)."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from .signals import add_rank_lookup, compact, rank_name, within_user_ranks


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class MetaModel:
    """Purchase probability from recommender scores.

    Scores are heavy-tailed (co-visitation counts, popularity), so they go through a signed
    ``log1p`` (matrix-factorisation scores can be negative) and standardisation before an
    L2-regularised logistic regression.

    Parameters
    ----------
    feature_names : list of str
        The recommenders whose scores are the features, in order.
    C : float
        Inverse regularisation strength.
    ranked : tuple of str
        Scores whose within-user ranks are features (named ``rank_NAME`` in
        ``feature_names``), derived from a whole block in :meth:`score_blocks`.
    rank_depth : int, optional
        Ranks beyond it are ``rank_depth + 1`` (cheaper to compute); None: exact ranks. It
        must be what the training examples were built with.
    kind : {"logistic", "gbm"}
        ``gbm``: scikit-learn's ``HistGradientBoostingClassifier`` on the same features
        (trees need no transform; ``C`` is then the inverse of its ``l2_regularization``),
        a non-linear alternative measured against the logistic default.

    Attributes
    ----------
    pipeline_ : sklearn Pipeline
        The fitted transform and classifier.
    calibration_ : tuple of float or None
        ``(slope, intercept)`` of the published probability (:meth:`calibrate`).
    fallback_ : MetaModel or None
        The non-personal model that ranks the list of a user with no history
        (``training.fit_fallback``); None for a model trained without one.
    """

    KINDS = ("logistic", "gbm")

    def __init__(self, feature_names: list[str], C: float = 1.0, ranked: tuple[str, ...] = (),
                 rank_depth: int | None = None, kind: str = "logistic"):
        if kind not in self.KINDS:
            raise ValueError(f"meta-model kind {kind!r}: choose from {self.KINDS}")
        self.feature_names = list(feature_names)
        self.C = C
        self.ranked = tuple(ranked)
        self.rank_depth = rank_depth
        self.kind = kind

    def fit(self, examples: pd.DataFrame) -> MetaModel:
        """Fit on ``examples`` with the feature columns and a 0/1 ``label`` column."""
        labels = examples["label"].to_numpy()
        if len(np.unique(labels)) < 2:
            raise ValueError("the training examples have only one class; the meta-model needs "
                             "purchases and open sales that were not bought")
        if self.kind == "gbm":
            self.pipeline_: Pipeline = make_pipeline(HistGradientBoostingClassifier(
                max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=20,
                l2_regularization=1.0 / self.C, early_stopping=False, random_state=0))
        else:
            self.pipeline_ = make_pipeline(
                FunctionTransformer(signed_log1p), StandardScaler(),
                LogisticRegression(C=self.C, max_iter=1000))
        self.pipeline_.fit(examples[self.feature_names].to_numpy(dtype=float), labels)
        self.calibration_ = None  # a refit model's log-odds need their own calibration
        self.fallback_ = None
        return self

    @property
    def coefficients_(self) -> dict[str, float]:
        """The logistic regression's weights per feature (on standardised ``log1p`` scores)."""
        if self.kind != "logistic":
            raise AttributeError("a gradient-boosted meta-model has no coefficients")
        regression = self.pipeline_[-1]
        return {**dict(zip(self.feature_names, regression.coef_[0].tolist())),
                "intercept": float(regression.intercept_[0])}

    @property
    def version_(self) -> str:
        """A content hash of the fitted model: the same model always has the same version."""
        if self.kind == "gbm":  # every tree's nodes (split features, thresholds, leaf values)
            trees = hashlib.sha256()
            for iteration in self.pipeline_[-1]._predictors:
                for tree in iteration:
                    trees.update(np.ascontiguousarray(tree.nodes).tobytes())
            parts = [self.feature_names, "gbm", self.C, trees.hexdigest()]
        else:
            scaler = self.pipeline_[1]
            parts = [self.feature_names, scaler.mean_.round(12).tolist(), scaler.scale_.round(12).tolist(),
                     [round(v, 12) for v in self.coefficients_.values()]]
        if self.rank_depth is not None:  # absent when None, so exact-rank versions keep theirs
            parts.append(self.rank_depth)
        if getattr(self, "calibration_", None) is not None:  # likewise for uncalibrated versions
            parts.append([round(v, 12) for v in self.calibration_])
        if getattr(self, "fallback_", None) is not None:  # and for models without a fallback
            parts.append(self.fallback_.version_)
        return "metamodel-" + hashlib.sha256(repr(parts).encode()).hexdigest()[:12]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The fitted regression's probability for rows of features (columns in
        ``feature_names`` order): of a purchase among sampled examples, not a real rate (see
        :meth:`probability`)."""
        return self.pipeline_.predict_proba(features)[:, 1]

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """The regression's log-odds for rows of features."""
        return self.pipeline_.decision_function(features)

    def calibrate(self, pairs: pd.DataFrame) -> MetaModel:
        """Fit ``calibration_`` on unsampled weighted pairs (``metamodel.calibration``)."""
        from .calibration import fit_calibration

        z = self.log_odds(pairs[self.feature_names].to_numpy(dtype=float))
        self.calibration_ = fit_calibration(z, pairs["label"].to_numpy(), pairs["weight"].to_numpy())
        return self

    def probability(self, log_odds: np.ndarray) -> np.ndarray:
        """The published purchase probability (that this user buys this sale on this day) of
        log-odds from :meth:`logit_blocks`: calibrated when ``calibration_`` is set (a model
        registered before calibration existed has none: its raw sigmoid)."""
        calibration = getattr(self, "calibration_", None)
        if calibration is None:
            return expit(log_odds)
        slope, intercept = calibration
        return expit(slope * np.asarray(log_odds) + intercept)

    def score_blocks(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Purchase probability for a ``users x sales`` block of each recommender's scores."""
        return self.probability(self.logit_blocks(scores))

    def logit_blocks(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The log-odds of :meth:`score_blocks` (ranking by it needs no ``expit`` per pair).

        The pipeline's algebra (signed ``log1p``, standardise, linear) is applied feature by
        feature into one buffer instead of stacking a ``users x sales x features`` copy, and
        a rank's ``log1p`` is looked up in a table, for the best ``rank_depth`` of each row
        only: the same numbers as :meth:`predict_proba`, in a few passes over the block. The
        gradient-boosted kind stacks the block's features and asks the trees.
        """
        if self.kind == "gbm":
            return self._tree_logits(scores)
        _, scaler, regression = self.pipeline_.named_steps.values()
        weights = regression.coef_[0] / scaler.scale_
        shape = np.shape(scores[self.feature_names[0]])
        z = np.full(shape, regression.intercept_[0] - float(weights @ scaler.mean_))
        term = np.empty(shape)
        ranked = {rank_name(name): name for name in self.ranked}
        for name, weight in zip(self.feature_names, weights):
            if name in ranked:  # ranks are 1..sales
                table = weight * np.log1p(np.arange(shape[1] + 1, dtype=float))
                add_rank_lookup(z, scores[ranked[name]], table, self.rank_depth)
                continue
            x = compact(np.asarray(scores[name], dtype=float))
            out = term if x.shape == shape else None
            if x.size and x.min() >= 0:  # most scores: the sign and abs passes change nothing
                transformed = np.log1p(x, out=out)
            else:
                transformed = np.copysign(np.log1p(np.abs(x, out=out), out=out), x, out=out)
            transformed *= weight
            z += transformed  # broadcast when the score repeats a row or a column
        return z

    def _tree_logits(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        shape = np.shape(scores[self.feature_names[0]])
        ranked = {rank_name(name): name for name in self.ranked}
        columns = [within_user_ranks(scores[ranked[n]], self.rank_depth) if n in ranked
                   else np.broadcast_to(np.asarray(scores[n], dtype=float), shape) for n in self.feature_names]
        stacked = np.stack([np.asarray(c, dtype=float).reshape(-1) for c in columns], axis=1)
        return self.pipeline_.decision_function(stacked).reshape(shape)

    def evaluate(self, examples: pd.DataFrame) -> dict[str, float]:
        """AUC and log loss on labelled examples."""
        probability = self.predict_proba(examples[self.feature_names].to_numpy(dtype=float))
        labels = examples["label"].to_numpy()
        return {"auc": float(roc_auc_score(labels, probability)),
                "log_loss": float(log_loss(labels, probability, labels=[0, 1]))}
