"""The night's HTML report: what a reviewer would rather look at than read.

One self-contained page (photos inlined as small JPEG thumbnails, no script, no external
file), published with the night's other outputs at ``OUT/reports/run_date=D/index.html``:

- the night in numbers: model version, active users, open sales, the A/B split;
- the image themes, each with its top tags and the photos of the sales that carry it most;
- for a sample of users (chosen by a seeded hash of their id, so the same users every
  night): their recent visits and purchases, then their top 10 with photo, title, price,
  purchase probability, the themes they share with the user's history (the image-theme
  recommender's profile) and where the single recommenders ranked the same sale.

Nothing in it depends on the clock or on timings, so a re-run of a night writes the same bytes.
"""
from __future__ import annotations

import base64
import html
import io
import logging

import numpy as np
import pandas as pd
from PIL import Image
from py4j.protocol import Py4JJavaError
from pyspark.sql import functions as F

from ..features.history import ScoringContext
from ..features.themes import Themes, theme_table
from ..metamodel.ranking import METAMODEL
from ..recommenders.base import UserHistory
from ..recommenders.image_themes import ImageThemes
from ..storage import FileSystem, join

log = logging.getLogger("salerank")

THUMBNAIL = 128
RECENT_EVENTS = 8


def sample_users(ranked, n: int, seed: int) -> list[str]:
    """``n`` users with a meta-model ranking, the same ones whatever the night's row order."""
    users = ranked.filter(F.col("strategy") == METAMODEL).select("user_id").distinct()
    key = F.sha2(F.concat(F.lit(f"{seed}:"), F.col("user_id")), 256)
    return [r.user_id for r in users.orderBy(key, "user_id").limit(n).collect()]


class Photos:
    """Each sale's first photo as an inline thumbnail (a placeholder when unreadable)."""

    def __init__(self, sale_images: pd.DataFrame, files: FileSystem, data_dir: str):
        order = [c for c in ("position", "image_path") if c in sale_images.columns]
        self.first = sale_images.sort_values(["sale_id", *order]).drop_duplicates("sale_id") \
            .set_index("sale_id")["image_path"]
        self.files, self.data_dir = files, data_dir  # the driver reads the few photos it shows
        self._cache: dict[str, str] = {}

    def img(self, image_path: str | None, alt: str) -> str:
        if image_path is None or (isinstance(image_path, float) and np.isnan(image_path)):
            return f'<div class="photo missing">{html.escape(alt)}</div>'
        if image_path not in self._cache:
            try:
                content = self.files.read_bytes(join(self.data_dir, image_path))
                with Image.open(io.BytesIO(content)) as image:
                    image = image.convert("RGB")
                    image.thumbnail((THUMBNAIL, THUMBNAIL))
                    buffer = io.BytesIO()
                    image.save(buffer, "JPEG", quality=80)
                self._cache[image_path] = base64.b64encode(buffer.getvalue()).decode()
            except (OSError, ValueError, Py4JJavaError) as err:  # Py4J: not found, unreadable
                log.warning("report: photo %s not shown: %s", image_path, str(err).splitlines()[0])
                self._cache[image_path] = ""
        data = self._cache[image_path]
        if not data:
            return f'<div class="photo missing">{html.escape(alt)}</div>'
        return (f'<img class="photo" alt="{html.escape(alt)}" title="{html.escape(str(image_path))}" '
                f'src="data:image/jpeg;base64,{data}">')

    def of_sale(self, sale_id: str, alt: str) -> str:
        return self.img(self.first.get(sale_id), alt)


def theme_drivers(context: ScoringContext, users: list[str], image_themes: ImageThemes,
                  sale_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per user, ``profile * sale themes`` for every sale in ``sale_idx``: how much each
    theme contributes to the image-theme score of that sale (sales x themes)."""
    spark = context.events.sparkSession
    frame = spark.createDataFrame([(u,) for u in users], "user_id string")
    rows = context.user_histories(frame).toPandas().set_index("user_id").reindex(users)
    history = UserHistory.from_lists([np.asarray(x, dtype=np.int64) for x in rows["items"]],
                                     [np.asarray(x, dtype=bool) for x in rows["bought"]],
                                     len(context.catalog), [np.asarray(x, dtype=float) for x in rows["age_days"]])
    profiles = image_themes.profiles(history)
    return {u: profiles[i][None, :] * image_themes.themes_[sale_idx] for i, u in enumerate(users)}


def night_report(context: ScoringContext, tables, ranked, themes: Themes | None,
                 image_themes: ImageThemes | None, data_dir: str, summary: dict, n_users: int,
                 seed: int) -> str:
    """The report's HTML (see the module docstring)."""
    users = sample_users(ranked, n_users, seed) if n_users else []
    images = tables.sale_images.toPandas()
    photos = Photos(images, FileSystem(tables.sales.sparkSession, data_dir), data_dir)
    sales = context.catalog.sales.set_index("sale_id")
    lists = ranked.filter(F.col("user_id").isin(users)).toPandas() if users else pd.DataFrame(
        columns=["strategy", "user_id", "rank", "sale_id", "score"])
    start = F.lit(context.as_of).cast("timestamp")
    events = (tables.visits.select("user_id", "sale_id", "ts", F.lit("visited").alias("what"))
              .unionByName(tables.purchases.select("user_id", "sale_id", "ts", F.lit("bought").alias("what")))
              .filter((F.col("ts") < start) & F.col("user_id").isin(users))).toPandas() if users else None
    parts = [_HEAD.format(day=html.escape(str(context.as_of))), _summary(summary)]
    if themes is not None:
        parts.append(_themes(themes, photos))
    drivers = {}
    if users and image_themes is not None:
        wanted = sales.loc[sorted(set(lists.sale_id)), "idx"].to_numpy()
        drivers = theme_drivers(context, users, image_themes, wanted)
        driver_index = {s: i for i, s in enumerate(sorted(set(lists.sale_id)))}
    parts.append(f'<h2>{len(users)} users</h2>')
    for user in users:
        mine = lists[lists.user_id == user]
        recent = events[events.user_id == user].sort_values(["ts", "sale_id"]).tail(RECENT_EVENTS)[::-1]
        themes_of = None
        if user in drivers:
            themes_of = lambda sale: drivers[user][driver_index[sale]]  # noqa: E731
        parts.append(_user(user, mine, recent, sales, photos, themes, themes_of))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary(summary: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    return f'<table class="summary">{rows}</table>'


def _themes(themes: Themes, photos: Photos) -> str:
    table = theme_table(themes, photos.first)
    rows = []
    for theme, row in table.iterrows():
        pictures = "".join(photos.img(p, theme) for p in row["example_images"])
        rows.append(f'<tr class="theme"><th>{html.escape(theme)}</th>'
                    f'<td>{html.escape(", ".join(row["top_tags"]))}</td><td class="photos">{pictures}</td></tr>')
    return ('<h2>Image themes</h2><table class="themes"><tr><th>theme</th><th>top tags</th>'
            f'<th>sales that carry it most</th></tr>{"".join(rows)}</table>')


def _sale_line(sales: pd.DataFrame, sale_id: str) -> str:
    sale = sales.loc[sale_id]
    details = [str(sale[c]) for c in ("destination", "category") if c in sales.columns and pd.notna(sale[c])]
    if "price" in sales.columns and pd.notna(sale["price"]):
        details.append(f"{sale['price']:.2f}")
    title = sale["title"] if "title" in sales.columns else sale_id
    return (f'<span class="title">{html.escape(str(title))}</span> <span class="sale-id">{html.escape(sale_id)}'
            f'</span><br><span class="details">{html.escape(" · ".join(details))}</span>')


def _user(user, lists, recent, sales, photos, themes, themes_of) -> str:
    history = "".join(
        f'<li class="event">{photos.of_sale(e.sale_id, e.sale_id)}<div>{e.what} '
        f'{html.escape(str(e.ts)[:10])}<br>{_sale_line(sales, e.sale_id)}</div></li>' for e in recent.itertuples())
    top = lists[lists.strategy == METAMODEL].sort_values("rank")
    others = lists[lists.strategy != METAMODEL].set_index("sale_id")
    items = []
    for rec in top.itertuples():
        also = others.loc[[rec.sale_id]] if rec.sale_id in others.index else others.iloc[:0]
        also = ", ".join(f"{s} #{r}" for s, r in sorted(zip(also.strategy, also["rank"]), key=lambda x: (x[1], x[0])))
        driven = ""
        if themes_of is not None:
            contribution = themes_of(rec.sale_id)
            best = [j for j in np.argsort(-contribution, kind="stable")[:2] if contribution[j] > 0]
            driven = ", ".join(themes.names[j] for j in best) or "none shared"
        items.append(
            f'<li class="rec" data-position="{rec.rank}" data-sale="{html.escape(rec.sale_id)}">'
            f'<span class="position">{rec.rank}</span>{photos.of_sale(rec.sale_id, rec.sale_id)}'
            f'<div>{_sale_line(sales, rec.sale_id)}<br><span class="score">p = {rec.score:.3f}</span>'
            + (f'<br><span class="drivers">themes: {html.escape(driven)}</span>' if themes_of else "")
            + f'<br><span class="also">also ranked by: {html.escape(also or "none of the single recommenders")}'
            f'</span></div></li>')
    return (f'<section class="user" data-user="{html.escape(user)}"><h3>user {html.escape(user)}</h3>'
            f'<div class="columns"><div><h4>recent visits and purchases</h4><ol class="history">'
            f'{history or "<li>none</li>"}</ol></div><div><h4>top {len(items)}</h4>'
            f'<ol class="recs">{"".join(items)}</ol></div></div></section>')


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>salerank night {day}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
.photo {{ width: {size}px; height: auto; margin-right: 8px; border-radius: 4px; }}
.photo.missing {{ display: inline-block; width: {size}px; height: 64px; background: #eee; font-size: 11px; }}
.columns {{ display: flex; gap: 3em; }}
ol.history, ol.recs {{ list-style: none; padding: 0; }}
li.event, li.rec {{ display: flex; align-items: flex-start; margin-bottom: 8px; }}
.position {{ font-size: 1.5em; width: 1.6em; }}
.sale-id, .details, .also, .drivers {{ color: #666; font-size: 0.85em; }}
section.user {{ border-top: 2px solid #444; margin-top: 2em; }}
</style></head><body>
<h1>salerank — the night of {day}</h1>""".replace("{size}", str(THUMBNAIL))
