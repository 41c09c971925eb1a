"""Atomic publication of a Spark output: all of it appears at once, or none of it.

The output is written to a hidden sibling folder (``_tmp-...``: Spark and Hive readers
skip names that start with ``_``), read back and checked, then renamed into place.  A
crash at any point leaves the previously published folder untouched or, in the instant
between the two renames, a ``_old-...`` copy of it; a re-run completes either way.
Works on any Hadoop file system (local, HDFS, S3A, ...).
"""
from __future__ import annotations

import uuid

from pyspark.sql import DataFrame


class PublishError(RuntimeError):
    """An output could not be written and checked; nothing was published."""


def publish_parquet(frame: DataFrame, path: str, expected_rows: int | None = None) -> int:
    """Write ``frame`` as a Parquet dataset at ``path``, replacing what was there atomically.

    Returns the number of rows published.
    """
    spark = frame.sparkSession
    jvm = spark.sparkContext._jvm
    target = jvm.org.apache.hadoop.fs.Path(path)
    fs = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    parent, name = target.getParent(), target.getName()
    fs.mkdirs(parent)
    token = uuid.uuid4().hex[:12]
    staging = jvm.org.apache.hadoop.fs.Path(parent, f"_tmp-{name}-{token}")
    old = jvm.org.apache.hadoop.fs.Path(parent, f"_old-{name}-{token}")
    try:
        frame.write.mode("error").parquet(staging.toString())
        written = spark.read.parquet(staging.toString()).count()
        if expected_rows is not None and written != expected_rows:
            raise PublishError(f"{path}: wrote {written} rows, expected {expected_rows}")
        if fs.exists(target) and not fs.rename(target, old):
            raise PublishError(f"{path}: could not move the previous output aside")
        if not fs.rename(staging, target):
            if fs.exists(old):
                fs.rename(old, target)
            raise PublishError(f"{path}: could not move the new output into place")
        fs.delete(old, True)
        return written
    finally:
        if fs.exists(staging):
            fs.delete(staging, True)
