"""spark-submit entry point of the demo: ``spark-submit jobs/demo.py --out OUT [--seed N]``."""
import sys

from salerank.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
