"""The driver's memory through a long backtest: does it stay flat from day to day?

    python benchmarks/backtest_memory.py [--users 1000] [--days 75] [--backtest-days 60]
        [--out /tmp/salerank-backtest-memory] [--driver-memory 2g]

Generates a world (``salerank.world``) and runs ``salerank backtest`` over its last
BACKTEST_DAYS days in this process, photos off. At the start of every backtest day (the
``backtest day i of n`` progress line) and once at the end it records the driver's memory:
the Python process's resident set, the driver JVM's (a child of this process in local mode),
and the broadcasts still alive on the driver (their pickles in the SparkContext's temporary
folder). Prints one row per day and the growth per day over the second half.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def java_child() -> int | None:
    """The driver JVM: the java process among this process's children (local mode)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == os.getpid() and "java" in (entry / "comm").read_text():
                    return int(entry.name)
            except (OSError, IndexError):
                continue
    return None


class DailyMemory(logging.Handler):
    """Records the memory when the backtest announces a day (and on ``sample("end")``)."""

    def __init__(self):
        super().__init__()
        self.rows, self.start = [], time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("backtest day "):
            self.sample(str(record.args[2]))

    def sample(self, day: str) -> None:
        from pyspark import SparkContext

        context, java = SparkContext._active_spark_context, java_child()
        self.rows.append({
            "day": day, "seconds": round(time.perf_counter() - self.start),
            "python_rss_mb": round(rss_mb(os.getpid())),
            "jvm_rss_mb": round(rss_mb(java)) if java else None,
            "live_broadcasts": len(os.listdir(context._temp_dir)) if context else None,
        })
        print(*self.rows[-1].values(), flush=True)  # as it goes: a run that dies keeps its rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=75)
    parser.add_argument("--backtest-days", type=int, default=60)
    parser.add_argument("--out", default="/tmp/salerank-backtest-memory")
    parser.add_argument("--driver-memory", default="2g", help="the driver JVM's heap (local mode)")
    args = parser.parse_args()

    from salerank.jobs.cli import main as salerank
    from salerank.jobs.spark import executor_salerank, get_spark
    from salerank.conf import load_config
    from salerank.world import WorldConfig, generate_world

    out = Path(args.out)
    world = generate_world(WorldConfig(n_users=args.users, n_days=args.days), seed=42)
    data = world.write(out / "world")
    settings = {"image_labelling": {"enabled": False},
                "spark": {"master": "local[2]", "shuffle_partitions": 4, "scoring_partitions": 2,
                          "driver_memory": args.driver_memory}}
    conf = out / "conf.yaml"
    conf.write_text(yaml.safe_dump(settings))
    start = world.last_date - dt.timedelta(days=args.backtest_days - 1)
    memory = DailyMemory()
    logging.getLogger("salerank").addHandler(memory)
    code = salerank(["backtest", "--data", str(data), "--start", str(start), "--end", str(world.last_date),
                     "--out", str(out / "backtest"), "--conf", str(conf)])
    memory.sample("end")
    print(f"exit status {code}; executors load salerank from "
          f"{executor_salerank(get_spark(load_config(str(conf))))}")
    table = pd.DataFrame(memory.rows)
    print(table.to_string(index=False))
    half = table.iloc[len(table) // 2:-1]
    for column in ("python_rss_mb", "jvm_rss_mb"):
        slope = np.polyfit(np.arange(len(half)), half[column].astype(float), 1)[0]
        print(f"{column}: first day {table[column].iloc[0]}, last day {table[column].iloc[-2]}, "
              f"max {table[column].max()}; second half {slope:+.1f} MB per day")


if __name__ == "__main__":
    main()
