"""Large synthetic inputs in the data contract, for the scale benchmark.

    python benchmarks/synthetic.py --users 1000000 --open-sales 1000 --out /tmp/scale-1m

Sizes are parameters. Sales open every day and run ``duration`` days, so about ``open_sales``
are open on any day, the run date included. Users visit sales open on the day of the visit,
with a taste for a few destinations and a skew towards popular sales. A fixed share of the
visits turn into purchases. This is not a world with a known truth (that is ``salerank.world``).
It is volume with realistic sparsity, written as Parquet, fast: numpy only, no photos.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DESTINATIONS = 60
CATEGORIES = ("hotel", "resort", "villa", "apartment", "cruise", "tour", "camping", "chalet")


def generate(n_users: int, open_sales: int, out: str | Path, days: int = 28, duration: int = 7,
             visits_per_user: float = 8.0, purchase_rate: float = 0.04, seed: int = 0,
             run_date: dt.date = dt.date(2026, 3, 1), world: str = "skewed",
             chunk_users: int = 1_000_000) -> dict:
    """Write ``users, sales, sale_images (empty), visits, purchases`` to ``out``; return sizes.

    ``world``: ``skewed`` (users lean to two favourite destinations and to the first sales of
    a day) or ``zipf`` (no taste: each visit goes to a sale open that day drawn by a Zipf law
    over the sales' popularity, exponent 1.1; ``purchase_rate`` is then best 0.05), the world
    the scale issue found three times as costly per user in the meta-model.

    Users are drawn ``chunk_users`` at a time and appended to each Parquet file as row groups,
    so memory stays that of one chunk (10M users fit); up to one chunk, the draws are those of
    one pass."""
    if world not in ("skewed", "zipf"):
        raise ValueError(f"world {world!r}: skewed or zipf")
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = run_date - dt.timedelta(days=days + duration)
    per_day = max(1, round(open_sales / duration))
    n_days = days + duration + 1
    opens = np.repeat(np.arange(n_days), per_day)  # day offset each sale opens
    n_sales = len(opens)
    destination = rng.integers(DESTINATIONS, size=n_sales)
    sales = pd.DataFrame({
        "sale_id": [f"s{i:07d}" for i in range(n_sales)],
        "title": [f"sale {i}" for i in range(n_sales)],
        "open_date": [first + dt.timedelta(days=int(d)) for d in opens],
        "close_date": [first + dt.timedelta(days=int(d) + duration - 1) for d in opens],
        "destination": [f"d{d:02d}" for d in destination],
        "category": rng.choice(CATEGORIES, size=n_sales),
        "price": np.round(rng.lognormal(6, 0.6, size=n_sales), 2),
    })
    world_of = {"name": world, "zipf_weight": None, "first": first, "per_day": per_day, "n_days": n_days,
                "duration": duration, "opens": opens, "destination": destination}
    # Spark reads microsecond timestamps, not pandas' default nanoseconds
    options = {"coerce_timestamps": "us", "allow_truncated_timestamps": True}
    writers, n_visits, n_purchases = {}, 0, 0
    try:
        for lo in range(0, n_users, chunk_users):
            users, visits, purchases = _users_and_events(
                rng, np.arange(lo, min(lo + chunk_users, n_users)), sales, world_of, visits_per_user,
                purchase_rate, run_date)
            purchases = purchases[purchases.ts < pd.Timestamp(run_date)]
            n_visits, n_purchases = n_visits + len(visits), n_purchases + len(purchases)
            for name, frame in (("users", users), ("visits", visits), ("purchases", purchases)):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if name not in writers:
                    writers[name] = pq.ParquetWriter(out / f"{name}.parquet", table.schema, **options)
                writers[name].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    for name, frame in (("sales", sales), ("sale_images", pd.DataFrame({
            "sale_id": pd.Series([], dtype=str), "image_path": pd.Series([], dtype=str)}))):
        frame.to_parquet(out / f"{name}.parquet", index=False, **options)
    sizes = {"users": n_users, "sales": n_sales, "open_on_run_date": int(
        ((sales.open_date <= run_date) & (sales.close_date >= run_date)).sum()),
        "visits": n_visits, "purchases": n_purchases, "run_date": run_date.isoformat()}
    (out / "sizes.json").write_text(json.dumps(sizes))
    return sizes


def _users_and_events(rng, ids: np.ndarray, sales: pd.DataFrame, world: dict, visits_per_user: float,
                      purchase_rate: float, run_date: dt.date):
    """The users ``ids``, their visits and their purchases (a ``purchase_rate`` share of the
    visits, ten minutes after them).

    Visits: a Poisson number per user, on days before the run date, each to a sale open that
    day; a user's visits lean to two favourite destinations, and to popular sales."""
    per_day, n_days, duration = world["per_day"], world["n_days"], world["duration"]
    opens, destination = world["opens"], world["destination"]
    n_users, n_sales = len(ids), len(opens)
    counts = rng.poisson(visits_per_user, size=n_users)
    user = np.repeat(np.arange(n_users), counts)
    n = len(user)
    day = rng.integers(duration, n_days - 1, size=n)  # histories start once the first sales run
    first_open = np.maximum(day - duration + 1, 0)  # sales open on ``day`` opened in [day-duration+1, day]
    slot = (first_open + rng.integers(0, np.minimum(duration, day + 1), size=n)) * per_day
    favourite = rng.integers(DESTINATIONS, size=(n_users, 2))
    popular = np.floor(per_day * rng.random(n) ** 2).astype(np.int64)  # skewed to the first of a day
    sale = slot + popular
    # with probability 0.5, a sale of a favourite destination opened that same day, if any
    wants = favourite[user, rng.integers(2, size=n)]
    opened = slot // per_day
    by_group = np.lexsort((destination, opens))  # sales sorted by (open day, destination)
    group = opens[by_group] * DESTINATIONS + destination[by_group]
    starts = np.searchsorted(group, np.arange(n_days * DESTINATIONS))
    sizes_of = np.diff(np.append(starts, n_sales))
    wanted = opened * DESTINATIONS + wants
    lean = (rng.random(n) < 0.5) & (sizes_of[wanted] > 0)
    pick = starts[wanted] + np.floor(rng.random(n) * np.maximum(sizes_of[wanted], 1)).astype(np.int64)
    sale[lean] = by_group[pick[lean]]
    if world["name"] == "zipf":
        if world["zipf_weight"] is None:  # one popularity per sale, for every chunk
            world["zipf_weight"] = _zipf_weights(rng, n_sales)
        sale = _zipf_visits(rng, day, opens, duration, world["zipf_weight"])
    seconds = rng.integers(0, 86400, size=n)
    ts = (pd.Timestamp(world["first"]) + pd.to_timedelta(day, unit="D") + pd.to_timedelta(seconds, unit="s"))
    user_ids = np.array([f"u{i:08d}" for i in ids], dtype=object)
    visits = pd.DataFrame({"user_id": user_ids[user], "sale_id": sales.sale_id.to_numpy()[sale], "ts": ts})
    bought = rng.random(n) < purchase_rate
    purchases = visits[bought].copy()
    purchases["ts"] = purchases["ts"] + pd.Timedelta(minutes=10)
    purchases["amount"] = sales.price.to_numpy()[sale[bought]]
    return pd.DataFrame({"user_id": user_ids}), visits, purchases


def _zipf_weights(rng, n_sales: int, exponent: float = 1.1) -> np.ndarray:
    """Zipf weights of a random popularity rank of every sale."""
    return 1.0 / (1 + rng.permutation(n_sales)) ** exponent


def _zipf_visits(rng, day: np.ndarray, opens: np.ndarray, duration: int, weight: np.ndarray) -> np.ndarray:
    """A sale per visit, among those open on its ``day``, drawn by the sales' ``weight``."""
    sale = np.empty(len(day), dtype=np.int64)
    for d in np.unique(day):
        open_now = np.flatnonzero((opens <= d) & (opens > d - duration))
        visits = np.flatnonzero(day == d)
        sale[visits] = rng.choice(open_now, size=len(visits), p=weight[open_now] / weight[open_now].sum())
    return sale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--open-sales", type=int, default=1000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--visits-per-user", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", default="skewed", choices=("skewed", "zipf"))
    parser.add_argument("--purchase-rate", type=float, default=None, help="default 0.04, zipf 0.05")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    rate = args.purchase_rate or (0.05 if args.world == "zipf" else 0.04)
    sizes = generate(args.users, args.open_sales, args.out, args.days,
                     visits_per_user=args.visits_per_user, purchase_rate=rate, seed=args.seed, world=args.world)
    print(json.dumps(sizes), f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
