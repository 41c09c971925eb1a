"""The SparkSession: the one given by spark-submit, or a local one.

The environment variables of :data:`ENVIRONMENT` are set by the driver for itself and given
to the executors as ``spark.executorEnv.*``. That is a launch-time setting: Spark reads it
when the SparkContext starts and does not support changing it afterwards. ``get_spark``
therefore sets it in the builder, before ``getOrCreate``: run as a plain program, and under
``spark-submit jobs/*.py`` too, it is that call which creates the context (spark-submit
starts the driver JVM, the Python program starts the context). To give the executors other
values, set the variables in the environment the job is started from: the driver's value is
the one the executors get.
"""
from __future__ import annotations

import os
import sys

from pyspark import SparkContext
from pyspark.sql import SparkSession

from ..conf import ConfigError

# Set by the driver for itself (unless its environment has them) and given to the executors.
ENVIRONMENT = {
    # implicit and numpy BLAS threads would oversubscribe the executor cores
    "OPENBLAS_NUM_THREADS": "1",
    # TensorFlow's C++ INFO and WARNING lines (oneDNN, CPU instructions) are noise: errors stay
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # MLflow's loggers propagate to the run's log file rather than print their own lines
    "MLFLOW_CONFIGURE_LOGGING": "false",
    # no "View run ... at: URL" lines on stdout (a tracking server shows its runs in its UI)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class ExecutorSetupError(ConfigError):
    """The executors cannot run salerank (exit status 2: the deployment is at fault)."""


def set_environment() -> dict[str, str]:
    """Set the variables of :data:`ENVIRONMENT` this process does not have; the values in
    effect. Call it before TensorFlow or MLflow is imported: they read them on import."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in ENVIRONMENT}


def get_spark(config: dict) -> SparkSession:
    """The active session, or a new one.

    Under ``spark-submit`` the master and resources come from its command line; run as a
    plain program, salerank starts Spark in local mode (``spark.master`` in the config).
    """
    # Workers must run this interpreter (with salerank installed), not the system python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = config["spark"]
    builder = SparkSession.builder.appName(settings["app_name"])
    for name, value in set_environment().items():
        builder = builder.config(f"spark.executorEnv.{name}", value)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        builder = (builder.master(settings["master"])
                   .config("spark.driver.memory", settings["driver_memory"])
                   .config("spark.ui.showConsoleProgress", "false"))
    builder = (builder
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.shuffle.partitions", str(settings["shuffle_partitions"]))
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               # Parquet timestamps in nanoseconds (pandas' default) read as longs; the loader
               # converts them (features.loading._parse) instead of refusing the file
               .config("spark.sql.legacy.parquet.nanosAsLong", "true"))
    # pyspark puts only .zip, .egg and .jar of --py-files on the executors' import path: a
    # wheel (a zip, importable as it is) would be copied to them and never imported
    if ".whl" not in SparkContext.PACKAGE_EXTENSIONS:
        SparkContext.PACKAGE_EXTENSIONS = (*SparkContext.PACKAGE_EXTENSIONS, ".whl")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def executor_salerank(spark: SparkSession) -> str:
    """Where an executor loads salerank from (``salerank.__file__`` there), by one task.

    Raises
    ------
    ExecutorSetupError
        When the executors cannot import salerank, saying how to ship it.
    """
    def where(_):
        import salerank

        yield salerank.__file__

    try:
        return spark.sparkContext.parallelize([0], 1).mapPartitions(where).collect()[0]
    except Exception as err:  # the task's ModuleNotFoundError arrives wrapped by Spark
        if "No module named 'salerank'" not in str(err):
            raise
        raise ExecutorSetupError(
            "the executors cannot import salerank: build a wheel (pip wheel --no-deps -w dist .) and "
            "ship it with spark-submit --py-files dist/salerank-*.whl, or install salerank in the "
            "executors' Python environment (README, spark-submit)") from None
