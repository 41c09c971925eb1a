"""The H&M Personalized Fashion Recommendations sample, in salerank's data contract.

    python -m salerank.adapters.hm --source ../shared/data/hm-sample --out DATA [--window-days 28]

H&M sells articles, not time-limited sales, and the data has no visits and no catalogue
calendar.  The rule for sale windows, chosen so that no window tells anything about the
future:

- An article becomes a *sale* on the day after its first purchase in the data (its debut:
  the first evidence that it is on the shelves) and stays open ``window_days`` days.
  Nothing after the debut shapes the window; a window ending at the article's last
  purchase would announce, while open, that somebody buys it again.
- The debut purchase and purchases after the window are kept as history (the loader
  warns that they fall outside the window); only purchases inside a window can be
  recommended and count as truth in a backtest.  ``stats.json`` reports how many that is.
- ``price`` of a sale is the price paid at its debut (known when it opens); ``amount`` of a
  purchase is the price paid.  The prices are H&M's normalised ones.

Articles without a row in ``articles.csv`` (most of the sample) get their ``article_id``
as title and no destination or category: content-based scoring ignores them on those
groups, and their photo still gives them image themes.  ``destination`` is the shop index
(``index_name``, e.g. Ladieswear, Divided), ``category`` the product type.  The photos are
not copied: ``DATA/images`` is a symbolic link to the source's folder.

``image_labels`` gives the tagger the catalogue's own vocabulary: for each photo of an article
with metadata, one tag per attribute of :data:`ATTRIBUTES`, written ``attribute=value``
(``category=Trousers``, ``colour=Black``, ...). The tagger trained on them predicts those
attributes for every photo, the articles without metadata included: they shape the themes, and
the predicted ``category`` and ``destination`` fill those of a sale without metadata in
content-based (see ``features.themes.sale_attributes``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

# attribute tag -> column of articles.csv. ``category`` and ``destination`` are named after the
# sale's columns they come from, so a sale without metadata is filled with the values predicted
# from its photo (content-based); the others only shape the themes. Colour: the perceived master
# colour, 19 values, rather than the 48 colour groups, most of which have a handful of photos.
ATTRIBUTES = {"category": "product_type_name", "destination": "index_name",
              "garment_group": "garment_group_name", "colour": "perceived_colour_master_name",
              "appearance": "graphical_appearance_name"}


def adapt(source: Path, window_days: int = 28) -> dict[str, pd.DataFrame]:
    """The contract's tables built from the H&M sample in ``source``."""
    ids = {"customer_id": str, "article_id": str}
    transactions = pd.read_csv(source / "transactions.csv", dtype=ids, parse_dates=["t_dat"])
    transactions = transactions.sort_values(["t_dat", "customer_id", "article_id"], kind="stable")
    articles = pd.read_csv(source / "articles.csv", dtype=ids).set_index("article_id")
    customers = pd.read_csv(source / "customers.csv", dtype=ids)

    debut = transactions.groupby("article_id").agg(first=("t_dat", "min"))
    debut["price"] = transactions.drop_duplicates("article_id").set_index("article_id")["price"]
    sales = pd.DataFrame({
        "sale_id": debut.index,
        "title": articles["prod_name"].reindex(debut.index).fillna(debut.index.to_series()).to_numpy(),
        "open_date": (debut["first"] + pd.Timedelta(days=1)).dt.date.to_numpy(),
        "close_date": (debut["first"] + pd.Timedelta(days=window_days)).dt.date.to_numpy(),
        "destination": articles["index_name"].reindex(debut.index).to_numpy(),
        "category": articles["product_type_name"].reindex(debut.index).to_numpy(),
        "price": debut["price"].to_numpy(),
    })
    purchases = pd.DataFrame({
        "user_id": transactions["customer_id"].to_numpy(),
        "sale_id": transactions["article_id"].to_numpy(),
        "ts": (transactions["t_dat"] + pd.Timedelta(hours=12)).to_numpy(),
        "amount": transactions["price"].to_numpy(),
    })
    users = customers.rename(columns={"customer_id": "user_id"})
    images = pd.DataFrame({"sale_id": debut.index, "image_path": [f"images/{a}.jpg" for a in debut.index]})
    labels = image_labels(articles.reindex(debut.index).dropna(how="all"), images.set_index("sale_id")["image_path"])
    visits = pd.DataFrame({"user_id": pd.Series(dtype=str), "sale_id": pd.Series(dtype=str),
                           "ts": pd.Series(dtype="datetime64[ns]")})
    return {"sales": sales, "sale_images": images, "users": users, "visits": visits, "purchases": purchases,
            "image_labels": labels}


def image_labels(articles: pd.DataFrame, photo_of: pd.Series) -> pd.DataFrame:
    """``image_path, tag``: each article's known attributes (:data:`ATTRIBUTES`; the columns
    ``articles`` has, a missing value skipped) as tags ``attribute=value`` of its photo."""
    frames = [pd.DataFrame({"image_path": photo_of.reindex(articles.index).to_numpy(),
                            "tag": attribute + "=" + articles[column].astype(str).to_numpy(),
                            "known": articles[column].notna().to_numpy()})
              for attribute, column in ATTRIBUTES.items() if column in articles.columns]
    if not frames:
        return pd.DataFrame({"image_path": pd.Series(dtype=str), "tag": pd.Series(dtype=str)})
    labels = pd.concat(frames, ignore_index=True)
    return labels[labels.pop("known")].sort_values(["image_path", "tag"], kind="stable").reset_index(drop=True)


def window_stats(tables: dict[str, pd.DataFrame]) -> dict:
    """How many purchases fall inside their sale's window (the ones a backtest can count)."""
    sales = tables["sales"].set_index("sale_id")
    p = tables["purchases"]
    day = pd.to_datetime(p["ts"]).dt.date
    inside = (day >= p["sale_id"].map(sales["open_date"])) & (day <= p["sale_id"].map(sales["close_date"]))
    return {"sales": len(sales), "purchases": len(p), "purchases_inside_a_window": int(inside.sum()),
            "share_inside": round(float(inside.mean()), 4),
            "sales_with_metadata": int(sales["category"].notna().sum()),
            "labelled_photos": int(tables["image_labels"]["image_path"].nunique()) if "image_labels" in tables else 0}


def write(tables: dict[str, pd.DataFrame], source: Path, out: Path) -> dict:
    """Write the tables as CSV into ``out`` (with ``images`` linked to the source's photos)
    and return :func:`window_stats`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    link = out / "images"
    if not link.exists():
        os.symlink((source / "images").resolve(), link, target_is_directory=True)
    stats = window_stats(tables)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the hm-sample folder")
    parser.add_argument("--out", required=True, help="data folder to write, in the contract")
    parser.add_argument("--window-days", type=int, default=28)
    args = parser.parse_args(argv)
    source = Path(args.source)
    stats = write(adapt(source, args.window_days), source, Path(args.out))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
