"""The rolling backtest on real data: the H&M sample, against implicit's ALS and BPR alone.

    python benchmarks/hm_backtest.py [--source ../shared/data/hm-sample] [--out /tmp/salerank-hm]
        [--start 2020-08-01] [--end 2020-09-15] [--truth-days 7] [--window-days 28]
        [--runs images,imagenet,noimages] [--conf FILE] [--variant NAME:RUN:FILE ...]

1. ``salerank.adapters.hm`` turns the sample into the data contract (sale windows: the 28
   days after an article's first purchase; see the adapter).
2. ``salerank backtest`` replays every date, ranking every buyer of the truth window
   (``--users all``: cold buyers included): with the images (the tagger trained on the
   articles' attributes, ``image_labels``: product type, colour, ...; its themes and the
   attributes it predicts for every photo), with the ImageNet classes as tags instead (no
   ``image_labels``: ``--runs imagenet``) and without images.
3. On the same split, ``implicit``'s ALS and BPR are used on their own, as their users
   would: trained on every purchase before D, ``recommend(..., items=<sales open on D>,
   filter_already_liked_items=True)``.
4. Every list (salerank's, read back from the published recommendations, its fallback list
   given to every user, implicit's, and with ``--peers`` those of ``hm_peers.py``: RecTools,
   LightFM, EASE) is scored by the same code against the same truth; the tables are printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from salerank.adapters import hm
from salerank.conf import load_config
from salerank.jobs.replay import run_backtest
from salerank.jobs.spark import get_spark
from salerank.metamodel.evaluation import PER_USER, Resampled, per_user_metrics, verdict

log = logging.getLogger("salerank")

INTERVAL_METRICS = ("recall", "ndcg", "hit_rate")
# the published models of a --variant run that are scored, renamed <model>_<variant>
VARIANT_MODELS = ("metamodel", "content", "image_themes", "visual")

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hm-sample"


def truth_for(tables: dict, day: dt.date, truth_days: int) -> pd.DataFrame:
    """Purchases in [day, day + truth_days) of the sales open on day that the buyer had not
    bought before day (as the backtest: no list can hold a sale its user bought)."""
    sales = tables["sales"]
    open_ids = set(sales[(sales.open_date <= day) & (sales.close_date >= day)].sale_id)
    p = tables["purchases"]
    when = pd.to_datetime(p["ts"]).dt.date
    before = set(zip(p.user_id[when < day], p.sale_id[when < day]))
    window = p[(when >= day) & (when < day + dt.timedelta(days=truth_days)) & p.sale_id.isin(open_ids)]
    window = window[[pair not in before for pair in zip(window.user_id, window.sale_id)]]
    return window[["user_id", "sale_id", "amount"]]


def implicit_lists(tables: dict, day: dt.date, users: list[str], seed: int) -> pd.DataFrame:
    """implicit's ALS and BPR on their own: top 10 of the sales open on ``day``."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    p = tables["purchases"]
    before = p[pd.to_datetime(p["ts"]).dt.date < day]
    user_index = pd.Index(sorted(set(before.user_id) | set(users)))
    item_index = pd.Index(sorted(tables["sales"].sale_id))
    matrix = sp.csr_matrix((np.ones(len(before), np.float32),
                            (user_index.get_indexer(before.user_id), item_index.get_indexer(before.sale_id))),
                           shape=(len(user_index), len(item_index)))
    matrix.data[:] = 1.0  # repeated purchases count once
    sales = tables["sales"]
    open_items = item_index.get_indexer(sales[(sales.open_date <= day) & (sales.close_date >= day)].sale_id)
    rows = user_index.get_indexer(users)
    frames = []
    models = {"implicit_als": AlternatingLeastSquares(factors=32, regularization=0.01, alpha=10.0,
                                                      iterations=15, random_state=seed, num_threads=1),
              "implicit_bpr": BayesianPersonalizedRanking(factors=32, learning_rate=0.05, iterations=100,
                                                          random_state=seed, num_threads=1)}
    for name, model in models.items():
        with threadpool_limits(1, "blas"):
            model.fit(matrix, show_progress=False)
        ids, scores = model.recommend(rows, matrix[rows], N=10, items=np.sort(open_items),
                                      filter_already_liked_items=True)
        for user, row_ids, row_scores in zip(users, ids, scores):
            keep = np.isfinite(row_scores) & (row_ids >= 0)
            frames.append(pd.DataFrame({"strategy": name, "user_id": user,
                                        "rank": np.arange(1, keep.sum() + 1),
                                        "sale_id": item_index[row_ids[keep]]}))
    return pd.concat(frames, ignore_index=True)


def published_lists(spark, out: Path, day: dt.date, models: dict | None) -> pd.DataFrame:
    """The backtest's published top-k of ``day``: every model, or ``models`` renamed."""
    frames = []
    for folder in sorted((out / "recommendations").glob("model=*")):
        model = folder.name.split("=", 1)[1]
        path = folder / f"run_date={day}"
        if path.exists() and (models is None or model in models):
            frame = spark.read.parquet(str(path)).toPandas()
            frames.append(frame.assign(strategy=model if models is None else models[model]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def fallback_lists(spark, out: Path, runs: dict, day: dt.date, users: list[str]) -> pd.DataFrame:
    """The meta-model's fallback list of the run whose models keep their names (the list a
    user with no history gets), given to every user: strategy ``fallback``."""
    folder = next((f for f, (_, _, models, _) in runs.items() if models is None), None)
    path = out / str(folder) / "fallback" / "model=metamodel" / f"run_date={day}"
    if folder is None or not path.exists():
        return pd.DataFrame()
    one = spark.read.parquet(str(path)).toPandas()[["rank", "sale_id"]]
    return one.merge(pd.DataFrame({"user_id": users}), how="cross").assign(strategy="fallback")


def peer_lists(peers: pd.DataFrame | None, day: dt.date, users: list[str]) -> pd.DataFrame:
    """``hm_peers.py``'s lists of ``day`` (a user it could not rank has none: a miss)."""
    if peers is None:
        return pd.DataFrame()
    mine = peers[pd.to_datetime(peers["day"]).dt.date == day]
    missing = sorted(set(peers["strategy"]) - set(mine["strategy"]))
    if missing:
        log.warning("%s: no lists of %s (the peer failed that day): its users are left out", day, missing)
    return mine[mine["user_id"].isin(set(users))][["strategy", "user_id", "rank", "sale_id"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    parser.add_argument("--out", default="/tmp/salerank-hm")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2020, 8, 1))
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2020, 9, 15))
    parser.add_argument("--truth-days", type=int, default=7)
    parser.add_argument("--window-days", type=int, default=28)
    parser.add_argument("--new-sale-days", type=int, default=3)
    parser.add_argument("--runs", default="images,noimages",
                        help="backtests to run, of: images (the tagger trained on the articles' "
                             "attributes), imagenet (ImageNet classes as tags: no image_labels), noimages")
    parser.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:RUN:FILE",
                        help="also replay RUN (images or noimages) with FILE merged over --conf, "
                             "its meta-model, content, image_themes and visual lists scored as "
                             "metamodel_NAME, ... (e.g. gbm:noimages:gbm.yaml); repeatable")
    parser.add_argument("--peers", help="the lists benchmarks/hm_peers.py wrote (Parquet), scored beside ours")
    parser.add_argument("--skip-backtests", action="store_true",
                        help="do not replay a run whose backtest is already published in OUT (its "
                             "metrics.json): score its lists, and replay only the others")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s salerank: %(message)s")
    source, out = Path(args.source), Path(args.out)
    tables = hm.adapt(source, args.window_days)
    stats = hm.write(tables, source, out / "data")
    hm.write({k: v for k, v in tables.items() if k != "image_labels"}, source, out / "data-imagenet")
    print("adapter:", json.dumps(stats))
    tables["sales"]["open_date"] = pd.to_datetime(tables["sales"]["open_date"]).dt.date
    tables["sales"]["close_date"] = pd.to_datetime(tables["sales"]["close_date"]).dt.date

    # run -> (output folder, data folder, image stage on?, which of its published models to
    # compare, renamed; None: all, as they are)
    runs = {"images": ("backtest", "data", True, None),
            "imagenet": ("backtest-imagenet", "data-imagenet", True, {
                m: f"{m}_imagenet" for m in ("metamodel", "content", "image_themes")}),
            "noimages": ("backtest-noimages", "data", False, {
                "metamodel": "metamodel_no_images", "content": "content_no_images"})}
    chosen = {runs[w][0]: runs[w][1:] + (None,) for w in args.runs.split(",")}
    if "backtest" not in chosen:  # compare every model of the first run that is there
        first = next(iter(chosen))
        chosen[first] = chosen[first][:2] + (None, None)
    for variant in args.variant:  # the same data, another configuration: paired with the rest
        name, run, conf = variant.split(":", 2)
        if f"backtest-{name}" in chosen or run not in ("images", "noimages"):
            parser.error(f"--variant {variant}: a new NAME, and RUN one of images, noimages")
        chosen[f"backtest-{name}"] = runs[run][1:3] + ({m: f"{m}_{name}" for m in VARIANT_MODELS}, conf)
    runs = chosen
    seconds, spark = {}, None
    for folder, (data, with_images, _, variant_conf) in runs.items():
        overrides = (yaml.safe_load(Path(variant_conf).read_text()) or {}) if variant_conf else {}
        overrides.setdefault("image_labelling", {})["enabled"] = with_images
        config = load_config(args.conf, overrides=overrides)
        spark = spark or get_spark(config)
        if args.skip_backtests and (out / folder / "metrics.json").exists():
            continue
        start = time.perf_counter()
        run_backtest(spark, str(out / data), args.start, args.end, str(out / folder), config,
                     truth_days=args.truth_days, users="all", new_sale_days=args.new_sale_days)
        seconds[folder] = time.perf_counter() - start

    peers = pd.read_parquet(args.peers) if args.peers else None
    per_user, sale_age = [], tables["sales"].set_index("sale_id")["open_date"]
    has_metadata = tables["sales"].set_index("sale_id")["category"].notna()
    bought_before = tables["purchases"].groupby("user_id")["ts"].min()
    for day in [args.start + dt.timedelta(days=i) for i in range((args.end - args.start).days + 1)]:
        lists = pd.concat([published_lists(spark, out / folder, day, models)
                           for folder, (_, _, models, _) in runs.items()], ignore_index=True)
        if lists.empty:
            continue
        truth = truth_for(tables, day, args.truth_days)
        truth = truth[truth.user_id.isin(set(lists.user_id))]
        users = sorted(set(lists.user_id))
        lists = pd.concat([lists, implicit_lists(tables, day, users, seed=42),
                           fallback_lists(spark, out, runs, day, users), peer_lists(peers, day, users)],
                          ignore_index=True)
        new_sale = truth.sale_id.map(sale_age) >= day - dt.timedelta(days=args.new_sale_days - 1)
        returning = pd.to_datetime(truth.user_id.map(bought_before)).dt.date < day
        described = truth.sale_id.map(has_metadata).astype(bool)
        for segment, part in (("overall", truth), ("new_sales", truth[new_sale]),
                              ("established_sales", truth[~new_sale]),
                              ("new_users", truth[~returning]), ("returning_users", truth[returning]),
                              ("no_metadata_sales", truth[~described]), ("metadata_sales", truth[described])):
            per_user.append(per_user_metrics(lists, part, 10).assign(day=day, segment=segment))
    scores = pd.concat(per_user, ignore_index=True)
    table = (scores.groupby(["segment", "strategy"])[list(PER_USER)].mean()
             .join(scores.groupby(["segment", "strategy"]).size().rename("user_days")))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; dates {args.start}..{args.end}, "
          f"truth window {args.truth_days} days, new sale = first {args.new_sale_days} days")
    print("backtest seconds:", {k: round(v) for k, v in seconds.items()})
    pd.set_option("display.width", 200)
    for segment in ("overall", "new_sales", "established_sales", "new_users", "returning_users",
                    "no_metadata_sales", "metadata_sales"):
        if segment not in table.index.get_level_values("segment"):
            continue
        print(f"\n== {segment}")
        print(table.loc[segment].sort_values("ndcg", ascending=False).round(4).to_string())
        # 95 % bootstrap intervals over the (user, day) pairs, and the meta-model against each
        # other list on the same pairs (paired), as salerank backtest gives them
        resampled = Resampled(scores[scores.segment == segment], 1000, seed=42)
        rows = {s: {m: f"{table.loc[(segment, s), m]:.4f} [{lo:.4f}, {hi:.4f}]"
                    for m, (lo, hi) in resampled.interval(s).items() if m in INTERVAL_METRICS}
                for s in table.loc[segment].sort_values("ndcg", ascending=False).index}
        print(pd.DataFrame.from_dict(rows, orient="index").to_string())
        metas = [s for s in resampled.strategies if s.startswith("metamodel")]
        # the runs' meta-models the others are read against: without images, then the first run
        references = [m for m in ("metamodel_no_images", "metamodel") if m in metas]
        for meta in metas:
            # against every other list, and against each reference before it (images against
            # none, a variant against both)
            others = [s for s in resampled.strategies if not s.startswith("metamodel")]
            others += [r for r in references[:references.index(meta) if meta in references else None]]
            for other in others:
                diff = resampled.difference(other, meta)
                print(f"  {meta} - {other}: " + ", ".join(
                    f"{m} [{lo:+.4f}, {hi:+.4f}] {verdict(lo, hi)}" for m, (lo, hi) in diff.items()
                    if m in INTERVAL_METRICS))


if __name__ == "__main__":
    main()
