"""spark-submit entry point of the rolling backtest.

    spark-submit jobs/backtest.py --data DATA --start D1 --end D2 --out OUT [--truth-days N]
        [--users active|all] [--conf FILE]

takes the same arguments as ``salerank backtest``.
"""
import sys

from salerank.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["backtest", *sys.argv[1:]]))
