"""NMF themes and the image-theme recommender on data with a known structure."""
from types import SimpleNamespace

import numpy as np
import pandas as pd

from salerank.features.themes import fit_themes, sale_attributes, sale_tag_matrix
from salerank.recommenders import ImageThemes, UserHistory


def test_themes_recover_groups_of_tags():
    rows = []
    for sale in range(20):
        tags = ("sea", "sand") if sale < 10 else ("snow", "peak")
        for photo in range(2):
            rows += [(f"s{sale:02d}", f"s{sale}_{photo}.jpg", tag, 0.8 - 0.3 * i) for i, tag in enumerate(tags)]
    themes = fit_themes(pd.DataFrame(rows, columns=["sale_id", "image_path", "tag", "probability"]),
                        n_themes=2, seed=0)
    assert len(themes.names) == 2 and all(name.startswith(("t00:", "t01:")) for name in themes.names)
    top = themes.theme_tags[themes.theme_tags["rank"] == 1].set_index("theme")["tag"]
    assert set(top) == {"sea", "snow"}
    beach = top[top == "sea"].index[0]
    weights = themes.sale_themes[beach]
    assert (weights.iloc[:10] > 0.1).all() and (weights.iloc[10:] < 1e-6).all()


def test_image_themes_scores_new_sales_by_the_users_theme_profile():
    # 4 sales: 0 and 2 are beach, 1 and 3 are ski; sales 2 and 3 are new (open, no history)
    themes = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.0], [0.0, 1.0]])
    context = SimpleNamespace(catalog=SimpleNamespace(themes=themes), open_idx=np.array([2, 3]))
    model = ImageThemes(visit_weight=1.0, purchase_weight=3.0).fit(context)
    history = UserHistory.from_lists([np.array([0, 1]), np.array([1]), np.array([], dtype=int)],
                                     [np.array([True, False]), np.array([False]), np.array([], dtype=bool)], 4)
    # user 0: beach weight 1+3, ski 1 -> profile (0.8, 0.2); user 1: ski only; user 2: nothing
    np.testing.assert_allclose(model.score(history), [[0.8, 0.2], [0.0, 1.0], [0.0, 0.0]])


def test_theme_profile_is_recency_weighted():
    themes = np.array([[1.0, 0.0], [0.0, 1.0]])
    context = SimpleNamespace(catalog=SimpleNamespace(themes=themes), open_idx=np.array([0, 1]))
    # visited the beach sale today and the ski sale 30 days ago: half the weight
    history = UserHistory.from_lists([np.array([0, 1])], [np.array([False, False])], 2,
                                     [np.array([0.0, 30.0])])
    decayed = ImageThemes(half_life_days=30.0).fit(context).score(history)
    np.testing.assert_allclose(decayed, [[2 / 3, 1 / 3]])
    flat = ImageThemes(half_life_days=None).fit(context).score(history)
    np.testing.assert_allclose(flat, [[0.5, 0.5]])


def _beach_and_ski_tags(sales: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for sale in range(sales):
        tags = ("sea", "sand", "palm") if sale % 2 else ("snow", "peak", "pine")
        for photo in range(2):
            rows += [(f"s{sale:02d}", f"s{sale}_{photo}.jpg", tag, float(rng.uniform(0.1, 0.9))) for tag in tags]
    return pd.DataFrame(rows, columns=["sale_id", "image_path", "tag", "probability"])


def test_saved_themes_transform_to_the_same_bits_and_a_sale_does_not_depend_on_the_others():
    """What training registers with the meta-model (JSON, no pickle) and the night transforms
    with: the same themes, names and weights as training computed; a sale's weights are its own,
    whatever other sales are transformed with it; unknown tags count 0."""
    import json

    from salerank.features.themes import ThemeModel

    tags = _beach_and_ski_tags()
    fitted = fit_themes(tags, n_themes=3, seed=0)
    loaded = ThemeModel.from_dict(json.loads(json.dumps(fitted.model.to_dict())))
    assert loaded.version == fitted.model.version and loaded.names == tuple(fitted.names)
    again = loaded.transform(tags)
    pd.testing.assert_frame_equal(again.sale_themes, fitted.sale_themes, check_exact=True)
    pd.testing.assert_frame_equal(again.theme_tags, fitted.theme_tags, check_exact=True)

    few = tags[tags.sale_id.isin(["s03", "s04"])]
    unknown = pd.DataFrame([("s03", "s3_9.jpg", "lighthouse", 0.9)], columns=tags.columns)
    alone = loaded.transform(pd.concat([few, unknown])).sale_themes
    # the unknown tag's photo still counts as one of the sale's photos (all zeros): 2/3 of the weights
    np.testing.assert_allclose(alone.loc["s03"], fitted.sale_themes.loc["s03"] * 2 / 3, rtol=1e-12)
    np.testing.assert_array_equal(alone.loc["s04"], fitted.sale_themes.loc["s04"])


def test_themes_whose_numbers_are_not_their_version_are_refused():
    import json

    import pytest

    from salerank.features.themes import ThemeModel

    described = json.loads(json.dumps(fit_themes(_beach_and_ski_tags(), n_themes=2, seed=0).model.to_dict()))
    described["components"][0][0] += 1e-9
    with pytest.raises(ValueError, match="not " + described["version"]):
        ThemeModel.from_dict(described)
    described["components"] = described["components"][:1]  # one theme's numbers for two names
    with pytest.raises(ValueError, match="components of shape"):
        ThemeModel.from_dict(described)


def test_each_sale_gets_its_most_probable_value_of_each_attribute():
    rows = [("s1", "a.jpg", "colour=Black", 0.6), ("s1", "a.jpg", "colour=Red", 0.3),
            ("s1", "b.jpg", "colour=Red", 0.8),  # over s1's two photos: Black 0.3, Red 0.55
            ("s1", "a.jpg", "type=Dress", 0.9), ("s2", "c.jpg", "type=Hat", 0.4), ("s2", "c.jpg", "beach", 0.9)]
    tags = pd.DataFrame(rows, columns=["sale_id", "image_path", "tag", "probability"])
    attributes = sale_attributes(sale_tag_matrix(tags))
    assert list(attributes.columns) == ["colour", "type"]
    assert attributes.loc["s1"].tolist() == ["Red", "Dress"]
    assert attributes.loc["s2", "colour"] is None and attributes.loc["s2", "type"] == "Hat"
    # fitted themes carry them, and a tagger without attributes gives none
    assert fit_themes(tags, n_themes=2, seed=0).sale_attributes.loc["s1", "colour"] == "Red"
    assert sale_attributes(sale_tag_matrix(_beach_and_ski_tags())).shape == (20, 0)
