"""The meta-model, negative sampling, top-k selection and the ranking metrics."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from salerank.metamodel.evaluation import ranking_metrics
from salerank.metamodel.signals import add_rank_lookup, within_user_ranks
from salerank.metamodel.model import MetaModel
from salerank.metamodel.ranking import RankTopK, top_k
from salerank.metamodel.training import SampleExamples
from salerank.recommenders import UserHistory
from salerank.recommenders.scoring import Block


def synthetic_examples(n=4000, seed=0):
    """Purchases driven by 'useful' (log-linear) and not at all by 'noise'."""
    rng = np.random.default_rng(seed)
    useful, noise = rng.exponential(2.0, n), rng.exponential(2.0, n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * np.log1p(useful) - 3.0)))).astype(int)
    return pd.DataFrame({"useful": useful, "noise": noise, "label": label,
                         "day": dt.date(2025, 1, 1)})


def test_metamodel_learns_which_score_matters():
    model = MetaModel(["useful", "noise"]).fit(synthetic_examples())
    coef = model.coefficients_
    assert coef["useful"] > 0.5 and abs(coef["noise"]) < 0.1
    held_out = model.evaluate(synthetic_examples(seed=1))
    assert held_out["auc"] > 0.7
    blocks = {"useful": np.array([[0.0, 5.0]]), "noise": np.array([[3.0, 0.0]])}
    probability = model.score_blocks(blocks)
    assert probability.shape == (1, 2) and probability[0, 1] > probability[0, 0]


@pytest.mark.parametrize("noise_repeats", ["nothing", "a row", "a column", "a broadcast row",
                                           "a broadcast column"])
def test_block_scoring_gives_the_pipelines_probabilities(noise_repeats):
    """score_blocks applies the fitted pipeline feature by feature: the same numbers, also
    when a score is the same for every user (a row) or for every sale (a column), copied or
    broadcast as the signals return them."""
    model = MetaModel(["useful", "noise", "rank_useful"], ranked=("useful",)).fit(
        synthetic_examples().assign(rank_useful=lambda f: f.useful.rank(ascending=False)))
    rng = np.random.default_rng(2)
    blocks = {"useful": rng.exponential(2.0, (50, 30)), "noise": rng.exponential(2.0, (50, 30))}
    blocks["useful"][:, :5] = 1.0  # ties share the best rank
    if noise_repeats == "a row":
        blocks["noise"][:] = blocks["noise"][0]
    elif noise_repeats == "a column":
        blocks["noise"][:] = blocks["noise"][:, :1]
    elif noise_repeats == "a broadcast row":
        blocks["noise"] = np.broadcast_to(blocks["noise"][0], (50, 30))
    elif noise_repeats == "a broadcast column":
        blocks["noise"] = np.broadcast_to(blocks["noise"][:, :1], (50, 30))
    ranks = pd.DataFrame(-blocks["useful"]).rank(axis=1, method="min").to_numpy()
    stacked = np.stack([blocks["useful"], blocks["noise"], ranks], axis=-1).reshape(-1, 3)
    expected = model.predict_proba(stacked).reshape(50, 30)
    np.testing.assert_allclose(model.score_blocks(blocks), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(1, 1), (6, 1), (1, 9), (40, 300)])
def test_within_user_ranks_equal_rankdata(shape):
    """Ties (zeros, repeated values, signs) share the best rank, exactly as scipy's."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    scores = rng.integers(-3, 4, shape) * rng.choice([0.5, 1.0], shape)
    scores[:, ::2] += rng.standard_normal((shape[0], (shape[1] + 1) // 2))
    ranks = within_user_ranks(scores)
    assert ranks.dtype == np.int32
    np.testing.assert_array_equal(ranks, rankdata(-scores, method="min", axis=1))


@pytest.mark.parametrize("depth", [1, 3, 10, 299])
def test_ranks_to_a_depth_are_exact_up_to_it(depth):
    """Ranks within the best ``depth`` are exact, ties at the boundary included (whether or
    not the partition picked them); the rest are ``depth + 1``."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(depth)
    scores = rng.integers(-3, 4, (40, 300)) * rng.choice([0.5, 1.0], (40, 300))
    scores[:, ::2] += rng.standard_normal((40, 150))
    expected = np.minimum(rankdata(-scores, method="min", axis=1), depth + 1)
    np.testing.assert_array_equal(within_user_ranks(scores, depth), expected)


@pytest.mark.parametrize("depth", [None, 1, 3, 10, 100, 299, 300])
def test_rank_lookup_equals_looking_up_every_rank(depth):
    """The meta-model adds a rank's table value without building the ranks beyond the
    depth: bit for bit the sums of looking up every rank (scipy's), for rows whose best are
    found by a bar (continuous, heavy-tailed, sorted) and rows whose ties leave no bar (sparse
    rows with fewer than ``depth`` non-zeros, ties inside the best and at the depth, one
    value), and for a score that is the same for every user."""
    from scipy.stats import rankdata

    from salerank.metamodel.kernels import _bar

    rng = np.random.default_rng(7)
    sparse = np.where(rng.random((40, 300)) < 0.97, 0.0, rng.exponential(1.0, (40, 300)))
    sparse[:5] = np.round(rng.random((5, 300)), 1)
    sparse[5] = 0.5
    continuous = np.vstack([rng.standard_normal((20, 300)), rng.pareto(1.0, (10, 300)),
                            np.sort(rng.random((10, 300)), axis=1)])
    if depth is not None and depth < 300:  # both ways of finding the best are exercised
        assert not any(np.isnan(_bar(row, depth, depth + depth // 2)) for row in continuous)
        assert np.isnan(_bar(sparse[5], depth, depth + depth // 2))  # one value
        # about 9 non-zeros per row: at the default depth, every bar at or below the 100th holds all 300
        assert depth != 100 or all(np.isnan(_bar(row, depth, depth + depth // 2)) for row in sparse[6:])
    for scores in (sparse, continuous, np.tile(sparse[0], (40, 1))):
        table = rng.standard_normal(302)
        base = rng.standard_normal(scores.shape)
        ranks = rankdata(-scores, method="min", axis=1).astype(int)
        expected = base + table[ranks if depth is None else np.minimum(ranks, depth + 1)]
        np.testing.assert_array_equal(add_rank_lookup(base.copy(), scores, table, depth), expected)
    with pytest.raises(ValueError, match="C-contiguous"):  # the rows it writes would be lost
        add_rank_lookup(np.zeros((300, 40)).T, sparse, table, depth)


def test_within_user_ranks_of_a_user_independent_score_and_of_nothing():
    popularity = np.tile([3.0, 7.0, 3.0, 0.0, 9.0], (4, 1))
    np.testing.assert_array_equal(within_user_ranks(popularity), np.tile([3, 2, 3, 5, 1], (4, 1)))
    assert within_user_ranks(np.zeros((0, 5))).shape == (0, 5)
    assert within_user_ranks(np.zeros((3, 0))).shape == (3, 0)


def test_block_scoring_with_ranks_to_a_depth_uses_the_models_depth():
    model = MetaModel(["useful", "noise", "rank_useful"], ranked=("useful",), rank_depth=5).fit(
        synthetic_examples().assign(rank_useful=lambda f: f.useful.rank(ascending=False).clip(upper=6)))
    rng = np.random.default_rng(3)
    blocks = {"useful": rng.exponential(2.0, (50, 30)), "noise": rng.exponential(2.0, (50, 30))}
    ranks = pd.DataFrame(-blocks["useful"]).rank(axis=1, method="min").clip(upper=6).to_numpy()
    stacked = np.stack([blocks["useful"], blocks["noise"], ranks], axis=-1).reshape(-1, 3)
    np.testing.assert_allclose(model.score_blocks(blocks), model.predict_proba(stacked).reshape(50, 30),
                               rtol=1e-12, atol=1e-15)


def test_model_version_is_a_content_hash():
    a = MetaModel(["useful", "noise"]).fit(synthetic_examples())
    b = MetaModel(["useful", "noise"]).fit(synthetic_examples())
    c = MetaModel(["useful", "noise"], C=0.001).fit(synthetic_examples())
    assert a.version_ == b.version_ != c.version_
    capped = MetaModel(["useful", "noise"], rank_depth=5).fit(synthetic_examples())
    assert capped.version_ != a.version_  # same weights, different rank features


def test_metamodel_refuses_a_single_class():
    examples = synthetic_examples().assign(label=1)
    with pytest.raises(ValueError, match="only one class"):
        MetaModel(["useful", "noise"]).fit(examples)


def test_top_k_breaks_ties_by_sale_order():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 2, 4], [4, 0, 1]])


def block(bought_before=()):
    """Two users, five open sales (catalogue indices 10..14); user a bought sale 11 before."""
    open_idx = np.arange(10, 15)
    items = [np.array([11, 3]), np.array([3])]
    flags = [np.array([True, False]), np.array([False])]
    scores = {"x": np.array([[5, 4, 3, 2, 1], [1, 2, 3, 4, 5]], dtype=float)}
    users = pd.DataFrame({"user_id": ["a", "b"], "positives": [np.array([12]), np.array([10, 14])]})
    return Block(users, UserHistory.from_lists(items, flags, 20), scores, open_idx,
                 np.array([f"s{i}" for i in open_idx]))


def test_sampled_negatives_are_open_unbought_and_reproducible():
    emit = SampleExamples(dt.date(2025, 1, 3), negatives_per_purchase=2, seed=3)
    first, again = emit(block()), emit(block())
    pd.testing.assert_frame_equal(first, again)
    a, b = first[first.user_id == "a"], first[first.user_id == "b"]
    assert a[a.label == 1].sale_id.tolist() == ["s12"]
    # a bought s11 before and s12 today: neither is a negative
    assert len(a[a.label == 0]) == 2 and not set(a[a.label == 0].sale_id) & {"s11", "s12"}
    assert sorted(b[b.label == 1].sale_id) == ["s10", "s14"]
    assert len(b[b.label == 0]) == 3  # up to 2 per purchase: only 3 unbought sales are left
    assert (a.set_index("sale_id").x == pd.Series({"s10": 5, "s11": 4, "s12": 3, "s13": 2, "s14": 1})
            .reindex(a.sale_id).values).all()
    # another seed: the same positives, another sample where there is a choice (a: 2 of s10,
    # s13, s14), the same sales where there is none (b: all of s11, s12, s13) drawn in another order
    def negatives(examples, user):
        return sorted(examples[(examples.user_id == user) & (examples.label == 0)].sale_id)

    other_seed = SampleExamples(dt.date(2025, 1, 3), 2, seed=4)(block())
    positives = [frame[frame.label == 1][["user_id", "sale_id"]].values.tolist() for frame in (first, other_seed)]
    assert positives[0] == positives[1] == [["a", "s12"], ["b", "s10"], ["b", "s14"]]
    assert negatives(first, "a") == ["s10", "s14"] and negatives(other_seed, "a") == ["s13", "s14"]
    assert negatives(first, "b") == negatives(other_seed, "b") == ["s11", "s12", "s13"]
    # over seeds, a's every pair is drawn, and b's draw order (what a ratio keeps) changes
    samples = [SampleExamples(dt.date(2025, 1, 3), 2, seed=seed)(block()) for seed in range(20)]
    assert {tuple(negatives(s, "a")) for s in samples} == {("s10", "s13"), ("s10", "s14"), ("s13", "s14")}
    orders = {tuple(s[(s.user_id == "b") & (s.label == 0)].draw) for s in samples}
    assert len(orders) > 1 and all(sorted(o) == [0, 1, 2] for o in orders)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_top_k_equals_a_stable_full_sort(k):
    """Many ties (scores on a coarse grid), -inf (bought) and NaN, more or fewer than k columns."""
    rng = np.random.default_rng(k)
    scores = np.round(rng.random((300, 25)), 1)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.nan
    expected = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_k(scores, k), expected)


def test_top_k_settles_wide_and_narrow_ties_as_a_stable_full_sort():
    """A sparse score (most sales tied at 0, the k-th among them), ties of two at the k-th,
    rows of one value throughout, rows sorted either way, -inf and NaN."""
    rng = np.random.default_rng(3)
    sparse = np.where(rng.random((200, 300)) < 0.02, rng.random((200, 300)), 0.0)
    narrow = rng.random((200, 300))
    narrow[:, 150] = np.sort(narrow, axis=1)[:, -10]  # ties with each row's 10th best
    flat = np.full((5, 300), 0.5)
    rising = np.sort(rng.random((5, 300)), axis=1)
    missing = np.where(rng.random((50, 300)) < 0.5, np.nan, np.where(rng.random((50, 300)) < 0.5, -np.inf, narrow[:50]))
    for scores in (sparse, narrow, flat, rising, rising[:, ::-1], missing,
                   np.vstack([sparse[:3], narrow[:3], flat[:1]])):
        expected = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), axis=1, kind="stable")[:, :10]
        np.testing.assert_array_equal(top_k(scores, 10), expected)


def test_rank_top_k_skips_what_was_bought():
    ranked = RankTopK(None, k=3, strategies=("x",))(block()).to_pandas()
    a = ranked[ranked.user_id == "a"]
    assert a.sale_id.tolist() == ["s10", "s12", "s13"] and a["rank"].tolist() == [1, 2, 3]
    assert ranked[ranked.user_id == "b"].sale_id.tolist() == ["s14", "s13", "s12"]


def test_a_score_shared_by_every_user_is_ranked_as_any_other():
    """Popularity is ranked once per block; each user still skips what they bought, and
    ties go to the lower sale as in :func:`top_k`."""
    rng = np.random.default_rng(11)
    n, m = 60, 40
    popularity = rng.integers(0, 6, m).astype(float)
    items = [rng.choice(m, rng.integers(0, 8), replace=False) for _ in range(n)]
    flags = [rng.random(len(i)) < 0.7 for i in items]
    history = UserHistory.from_lists(items, flags, m)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)]})
    shared = Block(users, history, {"p": np.broadcast_to(popularity, (n, m))}, np.arange(m), np.arange(m).astype(str))
    ranked = RankTopK(None, k=10, strategies=("p",))(shared).to_pandas()
    scores = np.tile(popularity, (n, 1))
    scores[history.bought.toarray() > 0] = -np.inf
    cols = top_k(scores, 10)
    expected = [c[np.isfinite(s[c])].astype(str).tolist() for c, s in zip(cols, scores)]
    assert ranked.groupby("user_id", sort=False).sale_id.agg(list).reindex(users.user_id).tolist() == expected


def test_meta_model_top_k_is_the_top_k_of_its_probabilities():
    """RankTopK ranks by log-odds and computes probabilities for the chosen only: the same
    list and numbers as ranking every pair's probability."""
    model = MetaModel(["useful", "noise"]).fit(synthetic_examples())
    rng = np.random.default_rng(5)
    n, open_idx = 40, np.arange(30)
    scores = {"useful": rng.exponential(2.0, (n, 30)), "noise": rng.exponential(2.0, (n, 30))}
    history = UserHistory.from_lists([np.array([3, 7])] * n, [np.array([True, False])] * n, 30)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)]})
    ranked = RankTopK(model, k=5, strategies=("metamodel",))(
        Block(users, history, scores, open_idx, np.array([f"s{i:02d}" for i in open_idx]))).to_pandas()
    probability = model.score_blocks(scores)
    probability[:, 3] = -np.inf  # bought
    cols = top_k(probability, 5)
    assert len(ranked) == n * 5 and "s03" not in set(ranked.sale_id)
    np.testing.assert_array_equal(ranked.sale_id.to_numpy().reshape(n, 5), np.char.add("s", np.char.zfill(cols.astype(str), 2)))
    np.testing.assert_allclose(ranked.score.to_numpy().reshape(n, 5), np.take_along_axis(probability, cols, axis=1),
                               rtol=1e-15)


def test_ranking_metrics_by_hand():
    recommended = pd.DataFrame({
        "strategy": ["m"] * 4, "user_id": ["a", "a", "b", "b"], "rank": [1, 2, 1, 2],
        "sale_id": ["s1", "s2", "s3", "s4"]})
    bought = pd.DataFrame({"user_id": ["a", "b", "b"], "sale_id": ["s2", "s9", "s8"]})
    row = ranking_metrics(recommended, bought, k=2).loc["m"]
    assert row["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert row["recall@2"] == pytest.approx((1 + 0) / 2)
    assert row["ndcg@2"] == pytest.approx((1 / np.log2(3)) / 1 / 2)
    assert row["users"] == 2
    assert row["map@2"] == pytest.approx((1 / 2 / 1 + 0) / 2)  # a's one hit at rank 2
    assert row["hit_rate@2"] == pytest.approx(1 / 2)


def test_average_precision_and_revenue_by_hand():
    recommended = pd.DataFrame({"strategy": "m", "user_id": "a", "rank": [1, 2, 3, 4],
                                "sale_id": ["s1", "s2", "s3", "s4"]})
    bought = pd.DataFrame({"user_id": "a", "sale_id": ["s1", "s3", "s9"], "amount": [10.0, 5.0, 7.0]})
    row = ranking_metrics(recommended, bought, k=4).loc["m"]
    assert row["map@4"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert row["revenue@4"] == pytest.approx(15.0)
    assert row["recall@4"] == pytest.approx(2 / 3)


def test_gradient_boosted_kind_learns_an_interaction_and_scores_blocks_as_its_rows():
    """Trees find what a linear model cannot (a purchase needs both signals high); blocks,
    ranks included, give the pipeline's own numbers; same data, same version."""
    rng = np.random.default_rng(4)
    a, b = rng.exponential(1.0, 4000), rng.exponential(1.0, 4000)
    frame = pd.DataFrame({"a": a, "b": b, "label": ((a > 1) & (b > 1)).astype(int) | (rng.random(4000) < 0.02)})
    frame["rank_a"] = frame["a"].rank(ascending=False)
    examples, held = frame.iloc[:3000], frame.iloc[3000:]  # measured on rows it did not see
    logistic = MetaModel(["a", "b"]).fit(examples)
    trees = MetaModel(["a", "b"], kind="gbm").fit(examples)
    assert trees.evaluate(held)["auc"] > logistic.evaluate(held)["auc"] + 0.02
    assert trees.version_ == MetaModel(["a", "b"], kind="gbm").fit(examples).version_ != \
        MetaModel(["a", "b"], C=0.01, kind="gbm").fit(examples).version_
    ranked = MetaModel(["a", "b", "rank_a"], ranked=("a",), kind="gbm").fit(examples)
    blocks = {"a": rng.exponential(1.0, (20, 30)), "b": np.broadcast_to(rng.exponential(1.0, 30), (20, 30))}
    ranks = pd.DataFrame(-blocks["a"]).rank(axis=1, method="min").to_numpy()
    stacked = np.stack([blocks["a"], blocks["b"], ranks], axis=-1).reshape(-1, 3)
    np.testing.assert_allclose(ranked.score_blocks(blocks), ranked.predict_proba(stacked).reshape(20, 30),
                               rtol=1e-12)
    with pytest.raises(AttributeError):
        trees.coefficients_
    with pytest.raises(ValueError, match="kind"):
        MetaModel(["a"], kind="forest")


def _rules(open_sales, **settings):
    from salerank.metamodel.rules import Rules

    defaults = {"max_per_destination": None, "max_per_category": None, "exclude_sales": [], "boost_sales": {}}
    return Rules.from_config({**defaults, **settings}, open_sales)


def test_business_rules_by_hand():
    open_sales = pd.DataFrame({"sale_id": ["s0", "s1", "s2", "s3", "s4", "s5"],
                               "destination": ["A", "A", "A", "B", "B", None],
                               "category": ["hotel", "villa", "hotel", "hotel", "villa", "hotel"]})
    scores = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    nobody = (np.zeros(0, int), np.zeros(0, int))
    assert _rules(open_sales) is None  # no rule: the plain top-k
    # two per destination: s2 (a third A) is passed over; s5 has none, never capped
    cols, _ = _rules(open_sales, max_per_destination=2).select(scores.copy(), nobody, 4, boosted=False)
    assert cols.tolist() == [[0, 1, 3, 4]]
    # and two hotels: s0 A/hotel, s1 A/villa, (s2: a third A), s3 B/hotel (the second hotel),
    # s4 B/villa, (s5: a third hotel): only four sales honour both caps
    cols, best = _rules(open_sales, max_per_destination=2, max_per_category=2).select(
        scores.copy(), nobody, 5, boosted=False)
    assert cols[0, :4].tolist() == [0, 1, 3, 4] and np.isinf(best[0, 4])
    excluded = _rules(open_sales, exclude_sales=["s0", "unknown"])
    cols, best = excluded.select(scores.copy(), (np.array([0]), np.array([1])), 2, boosted=False)  # s1 bought
    assert cols.tolist() == [[2, 3]] and best.tolist() == [[4.0, 3.0]]
    # a boost of e^3.5 on s4 lifts its log-odds from 2 to 5.5: second, published at its own 2
    cols, best = _rules(open_sales, boost_sales={"s4": float(np.exp(3.5))}).select(
        scores.copy(), nobody, 3, boosted=True)
    assert cols.tolist() == [[0, 4, 1]]
    np.testing.assert_allclose(best, [[6.0, 2.0, 5.0]])
    # calibrated with slope 2, the published log-odds move by slope x the shift: the factor on
    # the published odds needs half the shift, 2 -> 3.75: fourth, after s2's 4
    from salerank.metamodel.rules import Rules

    settings = {"max_per_destination": None, "max_per_category": None, "exclude_sales": [],
                "boost_sales": {"s4": float(np.exp(3.5))}}
    cols, _ = Rules.from_config(settings, open_sales, slope=2.0).select(scores.copy(), nobody, 4, boosted=True)
    assert cols.tolist() == [[0, 1, 2, 4]]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("per_destination, per_category", [(2, 3), (4, 8)])
def test_capped_lists_are_the_greedy_walk_down_each_users_order(seed, per_destination, per_category):
    """Against a plain loop: each user's sales in score order (ties to the lower sale), kept
    while the list has room and the sale's destination and category are under their caps;
    bought and excluded sales never; with the tight caps no list fills (every user is walked
    past the first 4k sales), with the loose ones most do within them."""
    rng = np.random.default_rng(seed)
    n, m, k = 200, 60, 10
    open_sales = pd.DataFrame({"sale_id": [f"s{i}" for i in range(m)],
                               "destination": rng.choice(["A", "B", "C", None], m, p=[0.6, 0.2, 0.1, 0.1]),
                               "category": rng.choice(["x", "y"], m, p=[0.8, 0.2])})
    rules = _rules(open_sales, max_per_destination=per_destination, max_per_category=per_category,
                   exclude_sales=["s1", "s2"])
    scores = np.round(rng.random((n, m)), 2)
    bought = np.nonzero(rng.random((n, m)) < 0.1)
    cols, best = rules.select(scores.copy(), bought, k, boosted=False)
    masked = scores.copy()
    masked[bought] = -np.inf
    for row in range(n):
        kept, per = [], {}
        for column in np.argsort(-masked[row], kind="stable"):
            d, c = open_sales.destination[column], open_sales.category[column]
            if not np.isfinite(masked[row, column]) or column in (1, 2) or len(kept) == k:
                continue
            if (d is not None and per.get(("d", d), 0) >= per_destination) or per.get(("c", c), 0) >= per_category:
                continue
            kept.append(column)
            if d is not None:
                per[("d", d)] = per.get(("d", d), 0) + 1
            per[("c", c)] = per.get(("c", c), 0) + 1
        finite = np.isfinite(best[row])
        assert cols[row][finite].tolist() == kept
        assert best[row][finite].tolist() == masked[row, kept].tolist()
    filled = np.isfinite(best).all(axis=1)
    assert filled.mean() > 0.5 if per_category == 8 else not filled.any()
