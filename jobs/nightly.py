"""spark-submit entry point of the nightly run.

    spark-submit jobs/nightly.py --data DATA --date YYYY-MM-DD --out OUT [--conf FILE]

takes the same arguments as ``salerank nightly``; the master, executors and resources come
from spark-submit's own options.  salerank must be importable on the driver and the
executors: installed in the cluster's Python environment, or shipped with
``--py-files salerank-*.whl`` (see the README).
"""
import sys

from salerank.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
