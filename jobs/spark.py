"""The SparkSession: the one given by spark-submit, or a local one."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


def get_spark(config: dict) -> SparkSession:
    """The active session, or a new one.

    Under ``spark-submit`` the master and resources come from its command line; run as a
    plain program, salerank starts Spark in local mode (``spark.master`` in the config).
    """
    # Workers must run this interpreter (with salerank installed), not the system python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # implicit and numpy BLAS threads would oversubscribe the executor cores.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    settings = config["spark"]
    builder = SparkSession.builder.appName(settings["app_name"])
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        builder = (builder.master(settings["master"])
                   .config("spark.driver.memory", settings["driver_memory"])
                   .config("spark.ui.showConsoleProgress", "false"))
    spark = (builder
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", str(settings["shuffle_partitions"]))
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             # Parquet timestamps in nanoseconds (pandas' default) read as longs; the loader
             # converts them (features.loading._parse) instead of refusing the file
             .config("spark.sql.legacy.parquet.nanosAsLong", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark
