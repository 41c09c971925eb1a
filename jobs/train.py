"""spark-submit entry point of the training job.

    spark-submit jobs/train.py --data DATA --date YYYY-MM-DD --out OUT [--alias champion] [--conf FILE]

takes the same arguments as ``salerank train``: trains the meta-model on the days before DATE
and registers it in the MLflow model registry (see the README).
"""
import sys

from salerank.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
