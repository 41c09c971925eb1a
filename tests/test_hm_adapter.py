"""The H&M adapter: sale windows that carry no future information, and a folder the loader accepts."""
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from salerank.adapters import hm

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hm-sample"


@pytest.fixture()
def source(tmp_path):
    """A miniature of the H&M files: three articles, one without metadata."""
    folder = tmp_path / "hm"
    (folder / "images").mkdir(parents=True)
    pd.DataFrame({
        "t_dat": ["2020-01-01", "2020-01-03", "2020-01-03", "2020-01-20", "2020-02-15"],
        "customer_id": ["c1", "c2", "c1", "c3", "c2"],
        "article_id": ["0100", "0100", "0200", "0300", "0100"],
        "price": [0.05, 0.04, 0.02, 0.03, 0.01],
        "sales_channel_id": 2,
    }).to_csv(folder / "transactions.csv", index=False)
    pd.DataFrame({"article_id": ["0100", "0200", "0900"], "prod_name": ["Tee", "Dress", "Never sold"],
                  "product_type_name": ["T-shirt", "Dress", "Hat"], "index_name": ["Ladieswear", "Divided", "Kids"],
                  "perceived_colour_master_name": ["Red", None, "Blue"]}
                 ).to_csv(folder / "articles.csv", index=False)
    pd.DataFrame({"customer_id": ["c1", "c2", "c3"], "age": [30, 40, 50]}).to_csv(folder / "customers.csv", index=False)
    for article in ("0100", "0200", "0300"):
        Image.new("RGB", (16, 24), "red").save(folder / "images" / f"{article}.jpg")
    return folder


def test_windows_open_the_day_after_the_debut_and_keep_the_leading_zeros(source):
    tables = hm.adapt(source, window_days=28)
    sales = tables["sales"].set_index("sale_id")
    assert list(sales.index) == ["0100", "0200", "0300"]
    assert str(sales.loc["0100", "open_date"]) == "2020-01-02" and str(sales.loc["0100", "close_date"]) == "2020-01-29"
    assert sales.loc["0100", "price"] == 0.05  # the debut price, known when the sale opens
    assert sales.loc["0300", "title"] == "0300" and pd.isna(sales.loc["0300", "category"])
    assert sales.loc["0200", "destination"] == "Divided"
    p = tables["purchases"]
    assert sorted(zip(p.user_id, p.sale_id, p.amount))[:2] == [("c1", "0100", 0.05), ("c1", "0200", 0.02)]
    assert tables["visits"].empty


def test_image_labels_are_the_known_attributes_of_each_photo(source):
    labels = hm.adapt(source)["image_labels"]
    # 0200 has no colour, 0300 no metadata, 0900 no photo (never sold); columns absent from
    # the file (garment group, ...) give no tags; product type and index are named after the
    # sale's columns they fill (category, destination)
    assert list(zip(labels.image_path, labels.tag)) == [
        ("images/0100.jpg", "category=T-shirt"), ("images/0100.jpg", "colour=Red"),
        ("images/0100.jpg", "destination=Ladieswear"),
        ("images/0200.jpg", "category=Dress"), ("images/0200.jpg", "destination=Divided")]
    # the tag of a sale's column is the value the sale has
    sales = hm.adapt(source)["sales"].set_index("sale_id")
    assert sales.loc["0100", "category"] == "T-shirt" and sales.loc["0200", "destination"] == "Divided"


def test_later_purchases_never_move_a_window(source):
    full = hm.adapt(source).get("sales").set_index("sale_id")
    transactions = pd.read_csv(source / "transactions.csv", dtype=str)
    transactions[transactions.t_dat < "2020-01-10"].to_csv(source / "transactions.csv", index=False)
    early = hm.adapt(source)["sales"].set_index("sale_id")
    pd.testing.assert_frame_equal(early, full.loc[early.index])


def test_written_folder_loads_in_the_contract(spark, source, tmp_path):
    from salerank.features.loading import load_tables

    stats = hm.write(hm.adapt(source), source, tmp_path / "data")
    # 0100 bought on 01-03 (inside its window) and 02-15 (after it); the debuts are outside
    assert stats["purchases_inside_a_window"] == 1 and stats["sales_with_metadata"] == 2
    assert stats["labelled_photos"] == 2
    tables = load_tables(spark, tmp_path / "data")
    assert tables.row_counts["sales"] == 3 and tables.row_counts["purchases"] == 5
    assert tables.row_counts["image_labels"] == 5
    assert (tmp_path / "data" / "images" / "0300.jpg").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/hm-sample is not here")
def test_the_real_sample(source):
    stats = hm.window_stats(hm.adapt(REAL))
    assert stats["sales"] == 17033 and stats["purchases"] == 31662
    assert stats["sales_with_metadata"] == 4116 and stats["labelled_photos"] == 4116
    assert 0.05 < stats["share_inside"] < 0.2
