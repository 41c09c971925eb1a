"""Each recommender on a hand-made history whose scores can be worked out by hand."""
import numpy as np
import pandas as pd
import pytest

from salerank.recommenders import ContentBased, ItemCF, Popularity, UserHistory


def history(items, bought=()):
    """One user's history over the catalogue s1..s4 (indices 0..3)."""
    return UserHistory.from_lists([np.array(items)], [np.isin(items, bought)], 4)


def test_only_events_before_the_day_are_seen(hand_context):
    context = hand_context
    assert sorted(context.events.select("user_id").distinct().toPandas()["user_id"]) == ["u1", "u2", "u3"]
    assert sorted(context.active_users(30).toPandas()["user_id"]) == ["u1", "u2", "u3"]
    assert sorted(context.active_users(1).toPandas()["user_id"]) == ["u3"]


def test_popularity_counts_distinct_recent_users(hand_context):
    model = Popularity(window_days=7).fit(hand_context)
    np.testing.assert_array_equal(model.values_, [2, 2, 2, 0])
    # [Jan 3, Jan 5): u2 bought s2 and visited s3, u3 visited s3
    assert Popularity(window_days=2).fit(hand_context).values_.tolist() == [0, 1, 2, 0]


def test_item_cf_sums_cosine_similarities(hand_context):
    model = ItemCF().fit(hand_context)
    # users per sale before the day: s1 {u1,u2}, s2 {u1,u2}, s3 {u2,u3}, s4 {}
    expected = np.array([[0, 1, .5, 0], [1, 0, .5, 0], [.5, .5, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(model.similarity_.toarray(), expected)
    np.testing.assert_allclose(model.score(history([0, 1])), [[1, 1, 1, 0]])
    np.testing.assert_allclose(model.score(history([2])), [[.5, .5, 0, 0]])


def test_item_cf_neighbourhood_keeps_the_most_similar(hand_context):
    model = ItemCF(neighbours=1).fit(hand_context)
    # of the similarities above, each open sale (a column) keeps its best: s1 keeps s2 (1 over
    # s3's .5), s2 keeps s1, s3 keeps s1 (tied with s2 at .5: the lower sale), s4 has none
    expected = np.array([[0, 1, .5, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(model.similarity_.toarray(), expected)


def test_item_cf_adds_dense_rows_where_co_visitation_is_dense_and_sums_the_same(hand_context):
    """Histories of the few sales that are every open sale's neighbours make the product dense:
    that block adds the similarity's rows as a dense array, a block of rarely shared sales takes
    the sparse product, and both sum what the sparse product sums."""
    import pickle

    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n_open, n_popular, n_rare = 40, 5, 295
    model = ItemCF()
    model.similarity_ = sp.vstack([sp.csr_matrix(rng.random((n_popular, n_open))),  # everyone's neighbours
                                   sp.random(n_rare, n_open, density=0.02, random_state=1)]).tocsr()
    popular = [np.append(rng.choice(n_popular, 4, replace=False), n_popular + rng.integers(n_rare))
               for _ in range(50)]
    rare = [n_popular + rng.choice(n_rare, 4, replace=False) for _ in range(50)]
    for items, dense in ((popular, True), (rare, False)):
        block = UserHistory.from_lists(items, [np.zeros(len(i), bool) for i in items], n_popular + n_rare)
        weights = block.weighted(1.0, 0.0)
        assert model.dense_pays(weights) is dense
        np.testing.assert_allclose(model.score(block), (weights @ model.similarity_).toarray(), rtol=1e-12, atol=0)
    assert model._dense is not None and "_dense" not in pickle.loads(pickle.dumps(model)).__dict__
    model.MAX_DENSE_CELLS = n_open  # too large for a worker: sparse, whatever the block
    assert not model.dense_pays(UserHistory.from_lists(popular, [np.zeros(5, bool)] * 50, 300).weighted(1.0, 0.0))


def test_content_profile_shares(hand_context):
    model = ContentBased(price_bands=2, visit_weight=1.0, purchase_weight=3.0).fit(hand_context)
    # a user who visited s3 (B, hotel, expensive band) matches s4 on destination and band
    np.testing.assert_allclose(model.score(history([2])), [[1, 0, 3, 2]])
    # visited s1 (weight 1) and bought s2 (weight 1 + 3): destination A 5/5, hotel 1/5,
    # villa 4/5, cheap band 5/5
    np.testing.assert_allclose(model.score(history([0, 1], bought=[1])), [[2.2, 2.8, .2, .8]])
    np.testing.assert_allclose(model.score(history([])), [[0, 0, 0, 0]])


def test_item_cf_similarity_choices(hand_context):
    # s1 {u1,u2} and s3 {u2,u3}: one user in common of 2 and 2
    jaccard = ItemCF(similarity="jaccard").fit(hand_context).similarity_.toarray()
    assert jaccard[0, 2] == pytest.approx(1 / 3) and jaccard[0, 1] == pytest.approx(1.0)
    asym = ItemCF(similarity="asymmetric", alpha=0.9).fit(hand_context).similarity_.toarray()
    assert asym[0, 2] == pytest.approx(1 / (2 ** 0.9 * 2 ** 0.1))
    with pytest.raises(ValueError, match="similarity"):
        ItemCF(similarity="pearson")


def test_item_cf_time_decay_halves_old_interactions(hand_context):
    model = ItemCF(half_life_days=2.0).fit(hand_context)
    # s1 seen 2 days ago (weight 1/2), s2 4 days ago (weight 1/4)
    recent = UserHistory.from_lists([np.array([0, 1])], [np.zeros(2, bool)], 4, [np.array([2.0, 4.0])])
    np.testing.assert_allclose(model.score(recent), [[0.25, 0.5, 0.5 * 0.5 + 0.25 * 0.5, 0]])


def test_content_matches_the_dominant_image_theme(hand_context):
    import dataclasses

    import pandas as pd

    # s1 and s3 show theme 0, s2 theme 1, s4 has no photo
    themes = pd.DataFrame({"t0": [0.9, 0.1, 0.8, 0.0], "t1": [0.1, 0.7, 0.2, 0.0]},
                          index=["s1", "s2", "s3", "s4"])
    context = dataclasses.replace(hand_context, catalog=hand_context.catalog.with_themes(themes))
    model = ContentBased(price_bands=2).fit(context)
    assert "theme=0" in model.feature_names_ and "theme=1" in model.feature_names_
    without = ContentBased(price_bands=2).fit(hand_context).score(history([0]))
    # a user who visited s1 now also matches s3 on its theme, and s4 on nothing new
    np.testing.assert_allclose(model.score(history([0])) - without, [[1, 0, 1, 0]])


def test_content_fills_missing_metadata_with_attributes_predicted_from_the_photos(hand_context):
    import dataclasses

    themes = pd.DataFrame({"t0": [1.0, 1.0, 1.0, 1.0]}, index=["s1", "s2", "s3", "s4"])
    known = hand_context.catalog.sales.set_index("sale_id")
    # s3 (a hotel, as s1) loses its category: a sale with only a photo, which predicts "hotel".
    # The other predictions (s1's own photo, colour) must change nothing: known metadata wins
    # and only attributes named after a content column are matched
    sales = hand_context.catalog.sales.assign(
        category=lambda s: s["category"].where(s["sale_id"] != "s3", None))
    photo_only = dataclasses.replace(hand_context.catalog, sales=sales)
    predicted = pd.DataFrame({"category": ["something else", None, known.loc["s3", "category"], None],
                              "colour": ["red", "blue", None, "red"]}, index=["s1", "s2", "s3", "s4"])

    def scores(catalog):
        model = ContentBased(price_bands=2).fit(dataclasses.replace(hand_context, catalog=catalog))
        return model, model.score(history([0]))

    model, filled = scores(photo_only.with_themes(themes, predicted))
    assert not any(name.startswith(("colour", "photo_")) for name in model.feature_names_)
    _, missing = scores(photo_only.with_themes(themes))
    _, full = scores(hand_context.catalog.with_themes(themes))
    # a user who visited s1 matches s3 on the category predicted from s3's photo, exactly as
    # when s3 had its metadata; without the prediction, s3 scores one group lower
    assert known.loc["s3", "category"] == known.loc["s1", "category"]
    np.testing.assert_allclose(filled, full)
    np.testing.assert_allclose(full - missing, [[0, 0, 1, 0]])


def top_k_rows(world, users, k: int) -> int:
    """The rows of one strategy's top-k on the world's last day, from the world's tables: per
    user, k, or the sales open that day they had not bought before it when fewer."""
    day = str(world.last_date)
    open_ids = set(world.sales.query("open_date <= @day and close_date >= @day").sale_id)
    before = world.purchases[(world.purchases.ts < day) & world.purchases.sale_id.isin(open_ids)]
    bought = before.groupby("user_id").sale_id.nunique()
    return int(sum(min(k, len(open_ids) - bought.get(user, 0)) for user in users))


def test_scoring_in_small_blocks_gives_the_same_rankings(tables, catalog, world):
    """Cutting the Arrow batches into blocks of a few users (to bound a task's memory)
    changes nothing in the output, down to the order of tied sales (sparse products sum
    each user's row on its own)."""
    from salerank.features.history import ScoringContext
    from salerank.metamodel.ranking import RANKING_SCHEMA, RankTopK
    from salerank.recommenders.scoring import score_users

    context = ScoringContext.build(tables, catalog, world.last_date)
    fitted = [ItemCF().fit(context), ContentBased().fit(context), Popularity().fit(context)]
    users = context.active_users(30)
    emit = RankTopK(None, k=5, strategies=("item_cf", "content", "popularity"))

    def ranked(block_cells):
        frame = score_users(context, fitted, users, emit, RANKING_SCHEMA, 2, block_cells=block_cells)
        return frame.toPandas().sort_values(["strategy", "user_id", "rank"]).reset_index(drop=True)

    whole, small = ranked(10**9), ranked(3 * len(context.open_idx))
    ids = users.toPandas().user_id
    assert len(ids) > 20 and len(whole) == 3 * top_k_rows(world, ids, 5)
    pd.testing.assert_frame_equal(whole, small)


def test_score_stage_times_the_meta_model_apart_from_its_top_k(tables, catalog, world):
    """The executor seconds of every step, the meta-model's log-odds and the top-k included,
    are counted by the executors (the harness prints them, MLflow records them)."""
    from salerank.features.history import ScoringContext
    from salerank.metamodel.model import MetaModel
    from salerank.metamodel.ranking import RANKING_SCHEMA, RankTopK
    from salerank.recommenders.scoring import score_users

    context = ScoringContext.build(tables, catalog, world.last_date)
    fitted = [ItemCF().fit(context), Popularity().fit(context)]
    rng = np.random.default_rng(0)
    examples = pd.DataFrame({"item_cf": rng.exponential(1, 500), "popularity": rng.exponential(1, 500),
                             "label": rng.random(500) < 0.3})
    model = MetaModel(["item_cf", "popularity"]).fit(examples)
    timers = {}
    frame = score_users(context, fitted, context.active_users(30),
                        RankTopK(model, 5, ("metamodel", "popularity")), RANKING_SCHEMA, 2, timers)
    assert frame.count() == 2 * top_k_rows(world, context.active_users(30).toPandas().user_id, 5)
    assert list(timers) == ["histories", "item_cf", "popularity", "metamodel", "top_k"]
    assert timers["metamodel"].value > 0 and timers["top_k"].value > 0


def test_signals_of_the_users_own_interest_and_the_sales_audience(hand_context):
    """Through the scoring path (histories from Spark, Arrow blocks): every pair's value worked
    out from the hand-made events before 2025-01-05 (the day's and later ones never count)."""
    from salerank.metamodel.calibration import SamplePairs
    from salerank.metamodel.signals import SIGNALS
    from salerank.recommenders.scoring import score_users

    names = ["sale_visits", "days_since_sale_visit", "visited_sale_last_day", "visitors_1d", "visitors_7d",
             "buyers_7d", "buyers_30d", "trend_7d"]
    fitted = [SIGNALS[n]().fit(hand_context) for n in names]
    schema = "user_id string, day date, sale_id string, label int, weight double, " + ", ".join(
        f"{n} double" for n in names)
    users = hand_context.events.sparkSession.createDataFrame(
        [(f"u{i}", None) for i in range(1, 5)], "user_id string, positives array<int>")
    # every pair but the ones bought before (u2, s2): SamplePairs at rate 1
    every_pair = SamplePairs(hand_context.as_of, rate=1.0, seed=0)
    got = score_users(hand_context, fitted, users, every_pair, schema, 2).toPandas().set_index(["user_id", "sale_id"])
    assert len(got) == 15
    # visits before the day: u1 s1 (Jan 1), s2 (Jan 2); u2 s1 (1), s2 (2), s3 (3); u3 s3 (4);
    # u2 bought s2 on Jan 3. Noon each, so the Jan 4 visit is 0.5 days old.
    assert got.loc[("u1", "s2"), "sale_visits"] == 1 and got.loc[("u2", "s3"), "sale_visits"] == 1
    assert got["sale_visits"].sum() == 5 and got.loc[("u4", "s1"), "sale_visits"] == 0
    assert got.loc[("u1", "s2"), "days_since_sale_visit"] == 2.5
    assert got.loc[("u3", "s3"), "days_since_sale_visit"] == 0.5
    assert got.loc[("u3", "s4"), "days_since_sale_visit"] == 365.0  # never visited
    assert got["visited_sale_last_day"].sum() == 1 and got.loc[("u3", "s3"), "visited_sale_last_day"] == 1
    by_sale = got.groupby("sale_id").first()
    assert by_sale["visitors_1d"].tolist() == [0, 0, 1, 0]
    assert by_sale["visitors_7d"].tolist() == [2, 2, 2, 0]
    assert by_sale["buyers_7d"].tolist() == [0, 1, 0, 0] and by_sale["buyers_30d"].tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(by_sale["trend_7d"], [np.log(3), np.log(3), np.log(3), 0.0])


def test_visual_similarity_sums_cosines_to_what_the_user_saw_and_similar_sales_are_the_nearest(hand_context):
    import dataclasses

    from salerank.recommenders import VisualSimilarity
    from salerank.recommenders.visual import similar_open_sales

    # unit vectors: s1 and s2 alike (cos 0.8), s3 orthogonal to both, s4 without a photo
    e = pd.DataFrame([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], index=["s1", "s2", "s3"])
    themes = pd.DataFrame({"t0": [1.0, 1.0, 1.0, 0.0]}, index=["s1", "s2", "s3", "s4"])
    catalog = hand_context.catalog.with_themes(themes, None, e)
    context = dataclasses.replace(hand_context, catalog=catalog)
    model = VisualSimilarity(visit_weight=1.0, purchase_weight=3.0, half_life_days=None).fit(context)
    # visited s1 (weight 1), bought s3 (weight 4): s1 1 + 0, s2 0.8, s3 0 + 4, s4 0
    np.testing.assert_allclose(model.score(history([0, 2], bought=[2])), [[1.0, 0.8, 4.0, 0.0]], atol=1e-6)
    similar = similar_open_sales(catalog, hand_context.open_idx, n=2)
    assert similar[similar.sale_id == "s1"].similar_sale_id.tolist() == ["s2", "s3"]
    assert similar[similar.sale_id == "s3"].similar_sale_id.tolist() == ["s1", "s2"]  # ties (0, 0) by sale_id
    assert "s4" not in set(similar.sale_id) | set(similar.similar_sale_id)
    np.testing.assert_allclose(similar[similar.sale_id == "s2"].similarity, [0.8, 0.0], atol=1e-6)
    # past similar_sales_exact_max the approximate search runs: one cell here, so the same answer
    pd.testing.assert_frame_equal(similar_open_sales(catalog, hand_context.open_idx, n=2, exact_max=1), similar)


def test_similar_sales_search_blockwise_exactly_and_approximately_finds_the_same_neighbours(monkeypatch):
    from salerank.metamodel.ranking import top_k
    from salerank.recommenders import visual

    # 40 clusters of photos (a scene each), in blocks of 300 rows
    monkeypatch.setattr(visual, "BLOCK_CELLS", 300 * 2500)
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 64))
    x = centres[rng.integers(0, 40, 2500)] + 0.5 * rng.standard_normal((2500, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert visual._block_rows(len(x)) == 300
    whole = x @ x.T
    np.fill_diagonal(whole, -np.inf)
    exact, exact_cosines = visual.exact_neighbours(x, 10)
    np.testing.assert_array_equal(exact, top_k(whole, 10))  # blocks change nothing
    np.testing.assert_allclose(exact_cosines, np.take_along_axis(whole, exact, axis=1))
    found, found_cosines = visual.approximate_neighbours(x, 10, seed=0, probes=12)
    np.testing.assert_array_equal(found, visual.approximate_neighbours(x, 10, seed=0, probes=12)[0])
    assert (found >= 0).all() and not (found == np.arange(len(x))[:, None]).any()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall > 0.95
    # and its neighbours are ordered by their exact cosine, best first
    cosines = np.take_along_axis(whole, found, axis=1)
    np.testing.assert_allclose(found_cosines, cosines)
    assert (np.diff(cosines, axis=1) <= 1e-12).all()
    # probing few cells finds fewer of them: the recall above is measured, not given
    few, _ = visual.approximate_neighbours(x, 10, seed=0, probes=1)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few, exact)]) < recall
