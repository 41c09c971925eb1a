"""Do image themes help? The meta-model with and without them, on the demo world.

    python benchmarks/image_themes_demo.py [--out /tmp/themes-bench] [--dates 2] [--users 2000]

Generates the default demo world, runs the nightly pipeline once (which tags the photos and
publishes the themes), then for the last ``--dates`` days trains the meta-model with and
without the image-theme feature on the same data and compares, against the world's true
purchase probabilities, the top 10 over all open sales and over only the sales in their first
two days (no history: where collaborative filtering is blind).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform

import pandas as pd

from salerank import recommenders as recs
from salerank.conf import load_config
from salerank.features.history import Catalog, ScoringContext
from salerank.features.loading import load_tables
from salerank.jobs.pipeline import run_nightly
from salerank.metamodel.ranking import rank_users
from salerank.metamodel.training import fit_metamodel
from salerank.jobs.spark import get_spark
from salerank.metamodel.ranking import METAMODEL
from salerank.world import WorldConfig, generate_world, truth_metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/salerank-themes-bench")
    parser.add_argument("--dates", type=int, default=2)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    config = load_config(overrides={"seed": args.seed})
    spark = get_spark(config)
    world = generate_world(WorldConfig(n_users=args.users), seed=args.seed)
    data = world.write(args.out)
    run_nightly(spark, str(data), world.last_date, args.out, config)
    themes = (spark.read.parquet(f"{args.out}/themes/run_date={world.last_date}/sale_themes").toPandas()
              .pivot_table(index="sale_id", columns="theme", values="weight", fill_value=0.0))
    tables = load_tables(spark, data)
    plain = Catalog.from_tables(spark, tables)
    rows = []
    for back in range(args.dates):
        day = world.last_date - dt.timedelta(days=back)
        for with_images in (False, True):
            catalog = plain.with_themes(themes) if with_images else plain
            prototypes = recs.from_config(config, with_images=with_images)
            model, metrics, _ = fit_metamodel(tables, catalog, prototypes, day, config)
            context = ScoringContext.build(tables, catalog, day)
            active = context.active_users(config["active_lookback_days"]).cache()
            opened = pd.to_datetime(catalog.sales["open_date"]).dt.date.to_numpy()
            new_idx = context.open_idx[opened[context.open_idx] >= day - dt.timedelta(days=1)]
            for subset, open_idx in (("all open sales", context.open_idx), ("sales in their first 2 days", new_idx)):
                ranked = rank_users(dataclasses.replace(context, open_idx=open_idx), prototypes, model,
                                    active, config).toPandas()
                truth = truth_metrics(ranked, world.user_truth, world.sale_truth,
                                      list(catalog.sale_ids(open_idx)), 10)
                for strategy, row in truth.iterrows():
                    rows.append({"date": day, "subset": subset, "open": len(open_idx),
                                 "variant": "with image themes" if with_images else "without",
                                 "strategy": strategy, "validation_auc": metrics.get("validation_auc"),
                                 **row.to_dict()})
    table = pd.DataFrame(rows)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; world: {args.users} users, seed {args.seed}")
    pivot = (table[table.strategy.isin([METAMODEL, "image_themes", "item_cf", "popularity"])]
             .groupby(["subset", "variant", "strategy"])[["true_ndcg@10", "mean_true_probability@10", "validation_auc"]]
             .mean().round(4))
    print(pivot.to_string())
    print("\nper date (meta-model):")
    print(table[table.strategy == METAMODEL][["date", "subset", "open", "variant", "true_ndcg@10",
                                               "validation_auc"]].round(4).to_string(index=False))


if __name__ == "__main__":
    main()
