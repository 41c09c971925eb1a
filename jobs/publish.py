"""Atomic publication of a Spark output: all of it appears at once, or none of it.

The output is written to a hidden sibling folder (``_tmp-...``: Spark and Hive readers
skip names that start with ``_``), read back and checked, then renamed into place.  A
crash at any point leaves the previously published folder untouched or, in the instant
between the two renames, a ``_old-...`` copy of it; a re-run completes either way.
Works on any Hadoop file system (local, HDFS, S3A, ...).
"""
from __future__ import annotations

import json
import uuid

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


class PublishError(RuntimeError):
    """An output could not be written and checked; nothing was published."""


class _FileSystem:
    """The Hadoop file system of a path, for renames that work on local, HDFS and S3A."""

    def __init__(self, spark, path: str):
        self.jvm = spark.sparkContext._jvm
        self.fs = self.path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def path(self, first, *children: str):
        """A Hadoop path: ``first`` (a string or a path) joined with each child name."""
        path = self.jvm.org.apache.hadoop.fs.Path(first) if isinstance(first, str) else first
        for child in children:
            path = self.jvm.org.apache.hadoop.fs.Path(path, child)
        return path

    def replace(self, staged, target) -> None:
        """Move ``staged`` to ``target``, replacing what was there (kept aside until then)."""
        self.fs.mkdirs(target.getParent())
        old = self.path(target.getParent(), f"_old-{target.getName()}-{uuid.uuid4().hex[:12]}")
        if self.fs.exists(target) and not self.fs.rename(target, old):
            raise PublishError(f"{target}: could not move the previous output aside")
        if not self.fs.rename(staged, target):
            if self.fs.exists(old):
                self.fs.rename(old, target)
            raise PublishError(f"{target}: could not move the new output into place")
        self.fs.delete(old, True)


def publish_parquet(frame: DataFrame, path: str, expected_rows: int | None = None) -> int:
    """Write ``frame`` as a Parquet dataset at ``path``, replacing what was there atomically.

    Returns the number of rows published.
    """
    spark = frame.sparkSession
    files = _FileSystem(spark, path)
    target = files.path(path)
    staging = files.path(target.getParent(), f"_tmp-{target.getName()}-{uuid.uuid4().hex[:12]}")
    try:
        frame.write.mode("error").parquet(staging.toString())
        written = spark.read.parquet(staging.toString()).count()
        if expected_rows is not None and written != expected_rows:
            raise PublishError(f"{path}: wrote {written} rows, expected {expected_rows}")
        files.replace(staging, target)
        return written
    finally:
        if files.fs.exists(staging):
            files.fs.delete(staging, True)


def content_checksum(frame: DataFrame) -> tuple[int, str]:
    """Rows and an order-independent checksum of a dataset's content: the sum of
    ``xxhash64`` over every row's columns, so that re-runs compare equal whatever the file
    names and partitioning."""
    row = frame.agg(F.count(F.lit(1)).alias("rows"),
                    F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)")).alias("sum")).first()
    return int(row["rows"]), f"xxhash64-sum:{row['sum'] or 0}"


class Night:
    """The outputs of one night, staged together and published together.

    Each output is written under ``OUT/_staging/run_date=D-TOKEN/<part>`` and read back
    (rows, checksum). :meth:`commit` then withdraws the night's marker, moves every part to
    ``OUT/<part>/run_date=D`` and writes ``OUT/manifests/run_date=D/{manifest.json,_SUCCESS}``
    last. A night is published when its ``_SUCCESS`` exists; a crash before the commit
    leaves every published output as it was, and a re-run of the date completes.
    """

    def __init__(self, spark, out_dir: str, run_date):
        self.spark, self.run_date = spark, run_date
        self.name = f"run_date={run_date.isoformat()}"
        self.files = _FileSystem(spark, out_dir)
        self.out = self.files.path(out_dir)
        staging_root = self.files.path(self.out, "_staging")
        for stale in self._listing(staging_root):  # left by a crashed run of this date
            if stale.getPath().getName().startswith(self.name + "-"):
                self.files.fs.delete(stale.getPath(), True)
        self.staging = self.files.path(staging_root, f"{self.name}-{uuid.uuid4().hex[:12]}")
        self.parts: list[str] = []
        self.outputs: dict[str, dict] = {}

    def _listing(self, folder):
        return self.files.fs.listStatus(folder) if self.files.fs.exists(folder) else []

    def staged(self, part: str, *inner: str) -> str:
        """Where to write part ``part`` (``recommendations``, ``exports``, ...) before the commit."""
        if part not in self.parts:
            self.parts.append(part)
        return "/".join([self.files.path(self.staging, part).toString(), *inner])

    def write_parquet(self, frame: DataFrame, part: str, *inner: str) -> dict:
        """Stage ``frame`` as Parquet and record its rows and checksum for the manifest."""
        path = self.staged(part, *inner)
        frame.write.mode("error").parquet(path)
        return self.record(part, *inner, frame=self.spark.read.parquet(path))

    def write_jsonl(self, lines: DataFrame, part: str, *inner: str) -> dict:
        """Stage a one-column (``value``) frame of JSON lines as one file, in frame order."""
        path = self.files.path(self.staged(part, *inner))
        folder = self.files.path(path.getParent(), f"_parts-{path.getName()}")
        lines.coalesce(1).write.mode("error").text(folder.toString())
        written = [s.getPath() for s in self.files.fs.listStatus(folder) if s.getPath().getName().startswith("part-")]
        if not written:  # no rows: Spark writes no part file
            self.files.fs.create(path).close()
        elif len(written) > 1 or not self.files.fs.rename(written[0], path):
            raise PublishError(f"{path}: expected one part file, got {len(written)}")
        self.files.fs.delete(folder, True)
        return self.record(part, *inner, frame=self.spark.read.text(path.toString()))

    def record(self, part: str, *inner: str, frame: DataFrame) -> dict:
        rows, checksum = content_checksum(frame)
        entry = {"rows": rows, "checksum": checksum}
        self.outputs["/".join([part, self.name, *inner])] = entry
        return entry

    def commit(self, manifest: dict) -> str:
        """Publish every staged part, then the manifest and the ``_SUCCESS`` marker."""
        marker = self.files.path(self.out, "manifests", self.name)
        self.files.fs.delete(marker, True)  # the date is being replaced: not complete until the end
        for part in self.parts:
            self.files.replace(self.files.path(self.staging, part), self.files.path(self.out, part, self.name))
        staged_marker = self.files.path(self.staging, "manifest")
        stream = self.files.fs.create(self.files.path(staged_marker, "manifest.json"))
        stream.write(bytearray(json.dumps({**manifest, "outputs": self.outputs}, indent=2, sort_keys=True).encode()))
        stream.close()
        self.files.fs.create(self.files.path(staged_marker, "_SUCCESS")).close()
        self.files.replace(staged_marker, marker)
        self.files.fs.delete(self.staging, True)
        return marker.toString()

    def abandon(self) -> None:
        self.files.fs.delete(self.staging, True)
