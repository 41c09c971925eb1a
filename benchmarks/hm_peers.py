"""The peers a team would run instead, on the H&M backtest's exact split: RecTools' two-stage
``CandidateRankingModel``, LightFM (WARP, with item features), EASE and RecTools' popularity.

Run it in the benchmark's own environment (the peers are never salerank dependencies), after
``hm_backtest.py`` has written the contract data; ``hm_backtest.py --peers FILE`` then scores
these lists with salerank's own, by the same code against the same truth::

    python -m venv /work/peers-venv
    /work/peers-venv/bin/pip install "rectools[lightfm]==0.19.0" catboost scikit-learn "pyarrow<20"
    /work/peers-venv/bin/python benchmarks/hm_peers.py --data /tmp/salerank-hm/data \\
        --start 2020-08-16 --end 2020-09-15 --out /tmp/salerank-hm/peers.parquet
    python benchmarks/hm_backtest.py --start 2020-08-16 --peers /tmp/salerank-hm/peers.parquet

It reads only the contract's CSV files (pandas): salerank itself is not imported.

Each date D, every model is trained on the purchases before D and ranks, for every buyer of
the truth window (as ``hm_backtest.py``: ``--users all``), the sales open on D, in its
library's documented way: ``recommend(users, dataset, k=10, filter_viewed=True,
items_to_recommend=<open sales>)``. A buyer the library cannot rank (no purchase before D,
``on_unsupported_targets="warn"``) gets no list and counts as a miss; RecTools' popularity
ranks them too. Settings:

- ``rectools_two_stage``: candidates from implicit ALS (32 factors) and popularity, 50 each with
  their ranks and scores as features; ``CatBoostRanker`` (YetiRank) reranks, trained on the
  last 7 days before D (``TimeRangeSplitter("7D")``), negatives ``PerUserNegativeSampler``.
- ``lightfm_warp``: 32 components, WARP, 30 epochs; item features: the articles' attributes
  (``image_labels``: product type, colour, ...) where known, plus the identity features.
- ``ease``: regularisation 500, on the items bought in the 180 days before D (a dense inverse
  over all 17,033 articles costs minutes a day; every open sale debuted less than 28 days ago,
  so none is left out).
- ``rectools_popular``: distinct buyers over all days before D.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("peers")
SEED = 42


def read_contract(data: Path) -> dict[str, pd.DataFrame]:
    sales = pd.read_csv(data / "sales.csv", dtype={"sale_id": str}, parse_dates=["open_date", "close_date"])
    purchases = pd.read_csv(data / "purchases.csv", dtype={"user_id": str, "sale_id": str}, parse_dates=["ts"])
    labels = pd.read_csv(data / "image_labels.csv", dtype=str) if (data / "image_labels.csv").exists() else None
    return {"sales": sales, "purchases": purchases, "image_labels": labels}


def truth_buyers(tables: dict, day: dt.date, truth_days: int) -> list[str]:
    """The buyers ranked on ``day``: purchases in [day, day + truth_days) of sales open on
    day, not bought before day (``hm_backtest.truth_for``)."""
    sales, p = tables["sales"], tables["purchases"]
    ts = pd.Timestamp(day)
    open_ids = set(sales[(sales.open_date <= ts) & (sales.close_date >= ts)].sale_id)
    before = set(zip(p.user_id[p.ts < ts], p.sale_id[p.ts < ts]))
    window = p[(p.ts >= ts) & (p.ts < ts + pd.Timedelta(days=truth_days)) & p.sale_id.isin(open_ids)]
    window = window[[pair not in before for pair in zip(window.user_id, window.sale_id)]]
    return sorted(set(window.user_id))


def item_features(labels: pd.DataFrame | None, items: set[str]) -> pd.DataFrame | None:
    """RecTools' flat item features (``id, feature, value``) from the attribute tags."""
    if labels is None:
        return None
    rows = labels.assign(id=labels.image_path.str.extract(r"([^/]+)\.jpg$")[0])
    rows = rows[rows.id.isin(items)]
    split = rows.tag.str.split("=", n=1, expand=True)
    return pd.DataFrame({"id": rows.id.to_numpy(), "feature": split[0].to_numpy(), "value": split[1].to_numpy()})


def models():
    from catboost import CatBoostRanker
    from implicit.als import AlternatingLeastSquares
    from lightfm import LightFM
    from rectools.model_selection import TimeRangeSplitter
    from rectools.models import EASEModel, ImplicitALSWrapperModel, LightFMWrapperModel, PopularModel
    from rectools.models.ranking import (CandidateGenerator, CandidateRankingModel, CatBoostReranker,
                                         PerUserNegativeSampler)

    def two_stage():
        als = ImplicitALSWrapperModel(AlternatingLeastSquares(factors=32, random_state=SEED, num_threads=1))
        return CandidateRankingModel(
            [CandidateGenerator(als, 50, keep_ranks=True, keep_scores=True),
             CandidateGenerator(PopularModel(), 50, keep_ranks=True, keep_scores=True)],
            splitter=TimeRangeSplitter("7D", n_splits=1),
            reranker=CatBoostReranker(CatBoostRanker(verbose=False, random_seed=SEED, thread_count=1,
                                                   allow_writing_files=False)),
            sampler=PerUserNegativeSampler(n_negatives=3, random_state=SEED))

    return {
        "rectools_two_stage": two_stage,
        "lightfm_warp": lambda: LightFMWrapperModel(
            LightFM(no_components=32, loss="warp", random_state=SEED), epochs=30, num_threads=1),
        "ease": lambda: EASEModel(regularization=500.0, num_threads=1),
        "rectools_popular": lambda: PopularModel(popularity="n_users"),
    }


def day_lists(tables: dict, day: dt.date, truth_days: int, k: int = 10) -> tuple[pd.DataFrame, dict]:
    from rectools import Columns
    from rectools.dataset import Dataset

    ts = pd.Timestamp(day)
    p = tables["purchases"]
    before = p[p.ts < ts]
    interactions = pd.DataFrame({Columns.User: before.user_id, Columns.Item: before.sale_id,
                                 Columns.Weight: 1.0, Columns.Datetime: before.ts})
    sales = tables["sales"]
    open_items = sorted(sales[(sales.open_date <= ts) & (sales.close_date >= ts)].sale_id)
    users = truth_buyers(tables, day, truth_days)
    frames, seconds = [], {}
    for name, make in models().items():
        start = time.perf_counter()
        data = interactions
        if name == "ease":
            data = interactions[interactions[Columns.Datetime] >= ts - pd.Timedelta(days=180)]
        features = item_features(tables["image_labels"], set(data[Columns.Item])) if name == "lightfm_warp" else None
        dataset = Dataset.construct(data, item_features_df=features,
                                    cat_item_features=None if features is None else sorted(set(features.feature)))
        known = set(dataset.item_id_map.external_ids)
        candidates = [i for i in open_items if i in known]
        try:
            model = make()
            model.fit(dataset)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recs = model.recommend(users=users, dataset=dataset, k=k, filter_viewed=True,
                                       items_to_recommend=candidates, on_unsupported_targets="warn")
        except Exception as err:  # noqa: BLE001 - a peer failing on a day is reported, not fatal
            log.warning("%s on %s failed: %s", name, day, err)
            continue
        seconds[name] = time.perf_counter() - start
        frames.append(pd.DataFrame({"day": day, "strategy": name, "user_id": recs[Columns.User].astype(str),
                                    "rank": recs[Columns.Rank].astype(int), "sale_id": recs[Columns.Item].astype(str)}))
    return pd.concat(frames, ignore_index=True), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the contract data hm_backtest.py wrote (OUT/data)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2020, 8, 16))
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2020, 9, 15))
    parser.add_argument("--truth-days", type=int, default=7)
    parser.add_argument("--out", required=True, help="Parquet file of the lists: day, strategy, user_id, rank, sale_id")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s peers: %(message)s")
    np.random.seed(SEED)
    tables = read_contract(Path(args.data))
    lists, totals = [], {}
    for i in range((args.end - args.start).days + 1):
        day = args.start + dt.timedelta(days=i)
        frame, seconds = day_lists(tables, day, args.truth_days)
        lists.append(frame)
        totals = {name: totals.get(name, 0.0) + s for name, s in seconds.items()}
        log.info("%s: %s", day, ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))
    pd.concat(lists, ignore_index=True).to_parquet(args.out, index=False)
    print("seconds (fit + recommend, all days):", {n: round(s) for n, s in totals.items()})


if __name__ == "__main__":
    main()
