"""Matrix factorisation with ``implicit``: ALS and BPR on the interactions before the day.

The model is trained on the driver (``implicit`` is single-node) from the users' visits and
purchases before the day, weighted like the other profiles, collected as Arrow: every user's,
or with ``max_users`` (``fit.max_users``) those of a seeded sample stratified by activity
(``ScoringContext.collect_interactions``), so the fit and the driver's memory stop growing
with the users.  Only the item factors of the catalogue are broadcast.  ALS folds each
block's users in from their history (``recalculate_user``: one exact least-squares solve per
user against the item factors), so users outside the fit still get factors; BPR has no such
solve: its user factors are joined to the users' histories when they are scored
(``user_state``), never broadcast (users it never saw score 0; hence the configuration
refuses BPR with ``fit.max_users``).

Sales that nobody had touched before the day have no signal: their factors stay at their
small random start and their scores are near 0.  The image themes cover those sales.
"""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from .base import Recommender, UserHistory


class _ImplicitMF(Recommender):
    """What ALS and BPR share: training data, and scoring against the open sales."""

    folds_users_in: bool  # True: users' factors are solved when scored; False: kept and joined

    def __init__(self, factors: int = 32, regularization: float = 0.01, iterations: int = 15,
                 visit_weight: float = 1.0, purchase_weight: float = 3.0, seed: int = 42,
                 max_users: int | None = None):
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.visit_weight = visit_weight
        self.purchase_weight = purchase_weight
        self.seed = seed
        self.max_users = max_users

    def _model(self):
        raise NotImplementedError

    def fit(self, context) -> _ImplicitMF:
        pairs = context.collect_interactions(["user_id", "sale_idx", "bought"], self.max_users, self.seed)
        # rows in user_id order, whatever order Spark sent them in: the same factors every run
        users = pc.unique(pairs["user_id"])
        users = users.take(pc.array_sort_indices(users))
        rows = pc.index_in(pairs["user_id"], value_set=users).to_numpy()
        weight = self.visit_weight + self.purchase_weight * pairs["bought"].to_numpy(zero_copy_only=False)
        matrix = sp.csr_matrix((weight.astype(np.float32), (rows, pairs["sale_idx"].to_numpy())),
                               shape=(len(users), len(context.catalog)))
        matrix.sort_indices()  # each row's sales in order, as the factors' sums must be
        self.model_ = None  # nothing happened before the day: every score is 0
        if matrix.nnz:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, "blas"):  # implicit's own threads; BLAS threads only contend
                self.model_ = self._model()
                self.model_.fit(matrix, show_progress=False)
            # scoring runs in Spark tasks, one per core: a thread pool per block only costs
            # (ALS's fold-in took 13 ms per 1,000 users on the pool, 4.8 ms on one thread)
            self.model_.num_threads = 1
            # per-user factors never travel with the broadcast model
            user_factors = np.asarray(self.model_.user_factors)
            self.model_.user_factors = user_factors[:0].copy()
            if not self.folds_users_in:  # only then a Python string per user
                self.user_ids_, self.user_factors_ = users.to_numpy(zero_copy_only=False), user_factors
        self.open_idx_ = context.open_idx
        return self

    def _user_factors(self, history: UserHistory) -> np.ndarray:
        raise NotImplementedError

    def score(self, history: UserHistory) -> np.ndarray:
        if self.model_ is None or len(history) == 0:
            return np.zeros((len(history), len(self.open_idx_)))
        items = np.asarray(self.model_.item_factors)[self.open_idx_]
        return np.asarray(self._user_factors(history) @ items.T, dtype=float)


class ALS(_ImplicitMF):
    """Implicit-feedback ALS (Hu, Koren & Volinsky, 2008) from ``implicit``.

    Parameters
    ----------
    factors, regularization, iterations : the model's.
    alpha : confidence of an interaction, ``1 + alpha * weight``.
    visit_weight, purchase_weight : an interaction's weight (a purchase adds its weight).
    seed : initial factors and the users' sample; training is deterministic given it.
    max_users : fit on at most this many users (a sample stratified by activity; None: all).
    threads : 0 (the default) uses every core. Each half-step solves users (or items)
        independently, so the factors are the same whatever the number of threads.
    """

    name = "als"
    folds_users_in = True

    def __init__(self, factors: int = 32, regularization: float = 0.01, iterations: int = 15,
                 alpha: float = 10.0, visit_weight: float = 1.0, purchase_weight: float = 3.0,
                 seed: int = 42, threads: int = 0, max_users: int | None = None):
        super().__init__(factors, regularization, iterations, visit_weight, purchase_weight, seed, max_users)
        self.alpha = alpha
        self.threads = threads

    def _model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                       alpha=self.alpha, iterations=self.iterations,
                                       random_state=self.seed, num_threads=self.threads)

    def _user_factors(self, history: UserHistory) -> np.ndarray:
        weights = history.weighted(self.visit_weight, self.purchase_weight).astype(np.float32)
        return self.model_.recalculate_user(np.arange(len(history)), sp.csr_matrix(weights))


class BPR(_ImplicitMF):
    """Bayesian personalised ranking (Rendle et al., 2009) from ``implicit``.

    Parameters
    ----------
    factors, learning_rate, regularization, iterations : the model's.
    visit_weight, purchase_weight : only whether a weight is positive matters to BPR.
    seed : initial factors and sampling.
    max_users : fit on at most this many users, as ALS's; the others score 0 (no fold-in:
        the configuration refuses it with ``fit.max_users``).
    threads : 1 (the default) gives the same factors for the same seed. More threads fit
        faster, but ``implicit`` then updates the factors lock-free (Hogwild), so they, and
        the night's recommendations, depend on thread timing.
    """

    name = "bpr"
    folds_users_in = False

    def __init__(self, factors: int = 32, learning_rate: float = 0.05, regularization: float = 0.01,
                 iterations: int = 50, visit_weight: float = 1.0, purchase_weight: float = 3.0,
                 seed: int = 42, threads: int = 1, max_users: int | None = None):
        super().__init__(factors, regularization, iterations, visit_weight, purchase_weight, seed, max_users)
        self.learning_rate = learning_rate
        self.threads = threads

    def _model(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization,
                                           iterations=self.iterations, random_state=self.seed,
                                           num_threads=self.threads)

    def user_state(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.model_ is None else (self.user_ids_, self.user_factors_)

    def __getstate__(self) -> dict:
        # what is broadcast to the workers: the item side only (user factors are joined)
        return {k: v for k, v in self.__dict__.items() if k not in ("user_ids_", "user_factors_")}

    def _user_factors(self, history: UserHistory) -> np.ndarray:
        if self.name not in history.states:
            raise ValueError("BPR scores users from their factors joined to their histories "
                             "(Recommender.user_state); this history has none")
        return history.states[self.name]
