"""NMF themes and the image-theme recommender on data with a known structure."""
from types import SimpleNamespace

import numpy as np
import pandas as pd

from salerank.features.themes import fit_themes
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
