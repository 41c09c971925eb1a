"""A generated travel-sale world whose true preferences are known.

Each sale has latent themes (beach, pool, ski, ...), a destination, a category and a
price; each user has latent theme preferences, two favourite destinations, a budget
and an activity rate.  Every day, active users visit a few of the sales open that day
and sometimes buy, following a choice model driven by those latents (:func:`utility`).
The latents are written apart from the data (``truth/``), never as pipeline input, so
tests can check that rankings recover them.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .photos import render

THEMES = ("beach", "pool", "ski", "city", "countryside", "spa", "mountains", "forest")
# Destination -> the themes its sales show.  Themes overlap across destinations, so the
# destination alone does not give a sale's themes away.
DESTINATIONS = {
    "Crete": ("beach", "pool", "spa"),
    "Algarve": ("beach", "pool", "countryside"),
    "Maldives": ("beach", "spa", "pool"),
    "Barcelona": ("city", "beach"),
    "Paris": ("city", "spa"),
    "Rome": ("city", "countryside"),
    "Tuscany": ("countryside", "pool", "spa"),
    "Alps": ("ski", "mountains", "spa"),
    "Dolomites": ("ski", "mountains", "forest"),
    "Lapland": ("ski", "forest"),
    "Black Forest": ("forest", "spa", "mountains"),
    "Patagonia": ("mountains", "forest", "countryside"),
}
CATEGORIES = {"hotel": 400.0, "resort": 900.0, "villa": 1200.0, "apartment": 300.0,
              "cruise": 1500.0, "tour": 700.0}
NAMES = ("Azure", "Olive", "Cedar", "Harbour", "Summit", "Meadow", "Lantern", "Coral",
         "Granite", "Willow", "Aurora", "Terrace")

# Weights of the choice model (a multinomial logit over the sales open that day).
THEME_WEIGHT = 5.0
DESTINATION_WEIGHT = 1.2
OVER_BUDGET_WEIGHT = 2.5
BROWSE_TEMPERATURE = 1.0
PURCHASE_BIAS = 5.0


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the generated world; the defaults make a demo of a few minutes on 2 cores."""

    n_users: int = 2000
    n_days: int = 75
    sales_per_day: int = 8
    min_duration: int = 3
    max_duration: int = 10
    start_date: dt.date = dt.date(2025, 3, 1)
    mean_visits_per_session: float = 3.0
    max_photos_per_sale: int = 3
    labelled_fraction: float = 0.3  # of photos that carry a hand label (their scene)


@dataclass
class World:
    """The observable tables (data contract) and the hidden truth behind them."""

    config: WorldConfig
    sales: pd.DataFrame
    sale_images: pd.DataFrame
    users: pd.DataFrame
    visits: pd.DataFrame
    purchases: pd.DataFrame
    user_truth: pd.DataFrame
    sale_truth: pd.DataFrame
    image_labels: pd.DataFrame
    photo_scenes: pd.DataFrame  # image_path, theme, seed: what each photo shows (truth)
    tables: tuple[str, ...] = field(
        default=("sales", "sale_images", "users", "visits", "purchases", "image_labels"))

    @property
    def last_date(self) -> dt.date:
        return self.config.start_date + dt.timedelta(days=self.config.n_days - 1)

    def write(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/data/*.csv`` (the contract) and ``out_dir/truth/*.parquet``."""
        out_dir = Path(out_dir)
        (out_dir / "data").mkdir(parents=True, exist_ok=True)
        (out_dir / "truth").mkdir(parents=True, exist_ok=True)
        for name in self.tables:
            getattr(self, name).to_csv(out_dir / "data" / f"{name}.csv", index=False)
        self.user_truth.to_parquet(out_dir / "truth" / "users.parquet", index=False)
        self.sale_truth.to_parquet(out_dir / "truth" / "sales.parquet", index=False)
        self.photo_scenes.to_parquet(out_dir / "truth" / "photos.parquet", index=False)
        (out_dir / "data" / "images").mkdir(exist_ok=True)
        for path, theme, seed in self.photo_scenes.itertuples(index=False):
            render(theme, np.random.default_rng(seed)).save(out_dir / "data" / path, quality=90)
        return out_dir / "data"


def generate_world(config: WorldConfig = WorldConfig(), seed: int = 42) -> World:
    """Generate a deterministic world: same config and seed, same tables."""
    rng = np.random.default_rng(seed)
    sales, sale_truth = _make_sales(config, rng)
    users, user_truth = _make_users(config, rng, sales)
    visits, purchases = _simulate(config, rng, sales, user_truth, sale_truth)
    sale_images, image_labels, photo_scenes = _make_photos(config, rng, sale_truth)
    return World(config, sales, sale_images, users, visits, purchases, user_truth, sale_truth,
                 image_labels, photo_scenes)


def utility(user_truth: pd.DataFrame, sale_truth: pd.DataFrame) -> np.ndarray:
    """True utility of every (user, sale) pair: users x sales, rows and columns in input order."""
    prefs = user_truth[[f"pref_{t}" for t in THEMES]].to_numpy()
    themes = sale_truth[[f"theme_{t}" for t in THEMES]].to_numpy()
    destinations = list(DESTINATIONS)
    user_favourites = np.zeros((len(user_truth), len(destinations)))
    for row, favs in enumerate(user_truth["favourite_destinations"]):
        user_favourites[row, [destinations.index(d) for d in favs.split("|")]] = 1.0
    favourite = user_favourites[:, [destinations.index(d) for d in sale_truth["destination"]]]
    over_budget = np.maximum(0.0, np.log(sale_truth["price"].to_numpy()[None, :]
                                         / user_truth["budget"].to_numpy()[:, None]))
    return (THEME_WEIGHT * prefs @ themes.T + DESTINATION_WEIGHT * favourite
            - OVER_BUDGET_WEIGHT * over_budget)


def purchase_probability(user_truth: pd.DataFrame, sale_truth: pd.DataFrame) -> np.ndarray:
    """Probability that a user who visits a sale buys it (users x sales)."""
    return 1.0 / (1.0 + np.exp(-(utility(user_truth, sale_truth) - PURCHASE_BIAS)))


def _make_sales(config: WorldConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Some sales are already open on day 0 so that the first days have a catalogue.
    n = config.sales_per_day * (config.n_days + config.max_duration)
    open_day = rng.integers(-config.max_duration, config.n_days, size=n)
    duration = rng.integers(config.min_duration, config.max_duration + 1, size=n)
    destinations = list(DESTINATIONS)
    destination = rng.choice(destinations, size=n)
    category = rng.choice(list(CATEGORIES), size=n)
    theme_weights = np.zeros((n, len(THEMES)))
    for i, dest in enumerate(destination):
        primary = THEMES.index(rng.choice(DESTINATIONS[dest]))
        theme_weights[i, primary] = 1.0
        if rng.random() < 0.5:
            theme_weights[i, rng.integers(len(THEMES))] += 0.5
    theme_weights /= theme_weights.sum(axis=1, keepdims=True)
    destination_level = {d: float(np.exp(rng.normal(0, 0.3))) for d in destinations}
    price = np.array([CATEGORIES[c] * destination_level[d] for c, d in zip(category, destination)])
    price = np.round(price * np.exp(rng.normal(0, 0.35, size=n)), 0)
    order = np.argsort(open_day, kind="stable")
    sale_ids = [f"s{i:05d}" for i in range(n)]
    dates = [config.start_date + dt.timedelta(days=int(d)) for d in open_day[order]]
    close = [d + dt.timedelta(days=int(k) - 1) for d, k in zip(dates, duration[order])]
    sales = pd.DataFrame({
        "sale_id": sale_ids,
        "title": [f"{rng.choice(NAMES)} {category[i]} in {destination[i]}" for i in order],
        "open_date": [d.isoformat() for d in dates],
        "close_date": [d.isoformat() for d in close],
        "destination": destination[order],
        "category": category[order],
        "price": price[order],
    })
    truth = pd.DataFrame(theme_weights[order], columns=[f"theme_{t}" for t in THEMES])
    truth.insert(0, "sale_id", sale_ids)
    truth["destination"] = sales["destination"].to_numpy()
    truth["price"] = sales["price"].to_numpy()
    return sales, truth


def _make_photos(config: WorldConfig, rng: np.random.Generator,
                 sale_truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """1..max photos per sale, each of one of the sale's themes drawn by its weight."""
    weights = sale_truth[[f"theme_{t}" for t in THEMES]].to_numpy()
    rows = []
    for sale_id, w in zip(sale_truth["sale_id"], weights):
        for position in range(int(rng.integers(1, config.max_photos_per_sale + 1))):
            theme = THEMES[rng.choice(len(THEMES), p=w)]
            rows.append((sale_id, f"images/{sale_id}_{position}.jpg", position, theme,
                         int(rng.integers(2**31))))
    photos = pd.DataFrame(rows, columns=["sale_id", "image_path", "position", "theme", "seed"])
    labelled = rng.random(len(photos)) < config.labelled_fraction
    image_labels = photos.loc[labelled, ["image_path", "theme"]].rename(columns={"theme": "tag"})
    return (photos[["sale_id", "image_path", "position"]], image_labels.reset_index(drop=True),
            photos[["image_path", "theme", "seed"]])


def _make_users(config: WorldConfig, rng: np.random.Generator,
                sales: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = config.n_users
    user_ids = [f"u{i:06d}" for i in range(n)]
    prefs = rng.dirichlet(np.full(len(THEMES), 0.3), size=n)
    destinations = list(DESTINATIONS)
    favourites = ["|".join(rng.choice(destinations, size=2, replace=False)) for _ in range(n)]
    budget = np.round(float(sales["price"].median()) * np.exp(rng.normal(0, 0.5, size=n)), 0)
    truth = pd.DataFrame(prefs, columns=[f"pref_{t}" for t in THEMES])
    truth.insert(0, "user_id", user_ids)
    truth["favourite_destinations"] = favourites
    truth["budget"] = budget
    truth["activity"] = rng.beta(2.0, 14.0, size=n)
    users = pd.DataFrame({"user_id": user_ids,
                          "signup_channel": rng.choice(["web", "app", "email"], size=n)})
    return users, truth


def _simulate(config: WorldConfig, rng: np.random.Generator, sales: pd.DataFrame,
              user_truth: pd.DataFrame, sale_truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    open_day = (pd.to_datetime(sales["open_date"]) - pd.Timestamp(config.start_date)).dt.days.to_numpy()
    close_day = (pd.to_datetime(sales["close_date"]) - pd.Timestamp(config.start_date)).dt.days.to_numpy()
    all_utility = utility(user_truth, sale_truth)
    activity = user_truth["activity"].to_numpy()
    visits, purchases = [], []
    for day in range(config.n_days):
        active = np.flatnonzero(rng.random(config.n_users) < activity)
        open_sales = np.flatnonzero((open_day <= day) & (close_day >= day))
        if len(active) == 0 or len(open_sales) == 0:
            continue
        u = all_utility[np.ix_(active, open_sales)]
        # Gumbel top-k: each active user visits k sales drawn without replacement by softmax.
        noisy = u / BROWSE_TEMPERATURE + rng.gumbel(size=u.shape)
        n_visits = 1 + rng.poisson(config.mean_visits_per_session - 1, size=len(active))
        rank = np.argsort(np.argsort(-noisy, axis=1), axis=1)
        rows, cols = np.nonzero(rank < n_visits[:, None])
        day_start = np.datetime64(config.start_date, "s") + np.timedelta64(day, "D")
        ts = day_start + rng.integers(0, 86_000, size=len(rows)).astype("timedelta64[s]")
        visits.append((active[rows], open_sales[cols], ts))
        bought = rng.random(len(rows)) < 1.0 / (1.0 + np.exp(-(u[rows, cols] - PURCHASE_BIAS)))
        delay = rng.integers(30, 300, size=int(bought.sum())).astype("timedelta64[s]")
        purchases.append((active[rows[bought]], open_sales[cols[bought]], ts[bought] + delay))
    return (_events(visits, user_truth, sales),
            _events(purchases, user_truth, sales, with_amount=True))


def _events(chunks: list, user_truth: pd.DataFrame, sales: pd.DataFrame,
            with_amount: bool = False) -> pd.DataFrame:
    users, sale_rows, ts = (np.concatenate(part) for part in zip(*chunks))
    order = np.lexsort((users, ts))
    users, sale_rows, ts = users[order], sale_rows[order], ts[order]
    frame = pd.DataFrame({
        "user_id": user_truth["user_id"].to_numpy()[users],
        "sale_id": sales["sale_id"].to_numpy()[sale_rows],
        "ts": np.datetime_as_string(ts, unit="s"),
    })
    frame["ts"] = frame["ts"].str.replace("T", " ")
    if with_amount:
        frame["amount"] = sales["price"].to_numpy()[sale_rows]
    return frame
