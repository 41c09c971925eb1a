"""The fit's bounded sample of users (``fit.max_users``), timed on ``synthetic.py`` data.

    python benchmarks/fit_sample.py DATA_DIR [--max-users 100000] [--repeat 2]

Times ``ScoringContext.collect_interactions(["user_id", "sale_idx", "bought"], max_users)``,
what ALS's fit reads: the strata, the seeded draw and the sampled users' whole histories
collected as Arrow on the driver. Prints the seconds of each repeat, the users kept (and a
digest of their ids, the same for two versions that draw the same sample) and the rows.
Run it from two installed versions one after the other to compare them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import time

from salerank.conf import load_config
from salerank.features.history import Catalog, ScoringContext
from salerank.features.loading import load_tables
from salerank.jobs.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--max-users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    spark = get_spark(load_config(overrides={"spark": {"driver_memory": "8g"}}))
    sizes = json.loads(spark.read.text(f"{args.data}/sizes.json", wholetext=True).first()[0])
    tables = load_tables(spark, args.data)
    run_date = dt.date.fromisoformat(sizes["run_date"])
    context = ScoringContext.build(tables, Catalog.from_tables(spark, tables), run_date)
    for _ in range(args.repeat):
        start = time.perf_counter()
        pairs = context.collect_interactions(["user_id", "sale_idx", "bought"], args.max_users, seed=42)
        seconds = time.perf_counter() - start
        users = sorted(set(pairs["user_id"].to_pylist()))
        digest = hashlib.sha256("\n".join(users).encode()).hexdigest()[:12]
        print(f"{seconds:.1f} s: {len(users)} users (sha256 {digest}), {len(pairs)} rows", flush=True)


if __name__ == "__main__":
    main()
