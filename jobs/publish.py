"""Atomic publication of a Spark output: all of it appears at once, or none of it.

The output is written to a hidden sibling folder (``_tmp-...``: Spark and Hive readers
skip names that start with ``_``), read back and checked, then renamed into place.  A
crash at any point leaves the previously published folder untouched or, in the instant
between the two renames, a ``_old-...`` copy of it; a re-run completes either way.
Works on any Hadoop file system (local, HDFS, S3A, ...).
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..storage import FileSystem

log = logging.getLogger("salerank")


class PublishError(RuntimeError):
    """An output could not be written and checked; nothing was published."""


def publish_parquet(frame: DataFrame, path: str, expected_rows: int | None = None) -> int:
    """Write ``frame`` as a Parquet dataset at ``path``, replacing what was there atomically.

    Returns the number of rows published.
    """
    spark = frame.sparkSession
    files = FileSystem(spark, path)
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
    (rows, checksum). :meth:`commit` stages the manifest and a ``_COMMIT`` journal, withdraws
    the night's marker, moves every part to ``OUT/<part>/run_date=D`` and moves
    ``manifests/run_date=D/{manifest.json,_SUCCESS}`` in last. A night is published when its
    ``_SUCCESS`` exists. A crash before the journal leaves every published output as it was
    (the staging is deleted by the next run of the date); a crash after it is rolled forward
    by the next run of the date, which first finishes the interrupted commit. The date's
    outputs of parts this run did not stage are withdrawn in the same commit.
    """

    JOURNAL = "_COMMIT"
    # every part a night may publish under OUT/<part>/run_date=D
    PARTS = ("recommendations", "fallback", "similar_sales", "exports", "image_tags", "themes", "reports",
             "manifests")

    def __init__(self, spark, out_dir: str, run_date, guard=None):
        self.spark, self.run_date = spark, run_date
        self.guard = guard  # called before the commit starts: raises if this run may not publish
        self.name = f"run_date={run_date.isoformat()}"
        self.files = FileSystem(spark, out_dir)
        self.out = self.files.path(out_dir)
        staging_root = self.files.path(self.out, "_staging")
        for stale in self._listing(staging_root):  # left by a crashed run of this date
            if stale.getPath().getName().startswith(self.name + "-"):
                self._recover(stale.getPath())
        self.staging = self.files.path(staging_root, f"{self.name}-{uuid.uuid4().hex[:12]}")
        self.parts: list[str] = []
        self.outputs: dict[str, dict] = {}

    def _listing(self, folder):
        return self.files.fs.listStatus(folder) if self.files.fs.exists(folder) else []

    def _recover(self, staging) -> None:
        """Finish the commit a crashed run had started, or drop what it had only staged."""
        journal = self.files.path(staging, self.JOURNAL)
        if self.files.fs.exists(journal):
            log.warning("%s: finishing the commit of an interrupted run", staging)
            listed = self.files.read_text(journal)
            if listed:
                self._move_in(staging, json.loads(listed))
            else:  # an older version's empty journal: what is left staged, and nothing withdrawn
                self._move_in(staging, [name for name in self.files.names(staging) if not name.startswith("_")],
                              withdraw=False)
        self.files.fs.delete(staging, True)

    def staged(self, part: str, *inner: str) -> str:
        """Where to write part ``part`` (one of ``PARTS``) before the commit."""
        if part not in self.PARTS:
            raise ValueError(f"{part}: not a part of a night ({', '.join(self.PARTS)})")
        if part not in self.parts:
            self.parts.append(part)
        return "/".join([self.files.path(self.staging, part).toString(), *inner])

    def write_parquet(self, frame: DataFrame, part: str, *inner: str) -> dict:
        """Stage ``frame`` as Parquet and record its rows and checksum for the manifest."""
        path = self.staged(part, *inner)
        frame.write.mode("error").parquet(path)
        return self.record(part, *inner, frame=self.spark.read.parquet(path))

    def write_jsonl(self, lines: DataFrame, part: str, *inner: str) -> dict:
        """Stage a one-column (``value``) frame of JSON lines as one file, in frame order: its
        partitions are written in parallel, then joined into the file in partition order (a
        globally sorted frame, ``orderBy``, stays sorted)."""
        path = self.files.path(self.staged(part, *inner))
        folder = self.files.path(path.getParent(), f"_parts-{path.getName()}")
        lines.write.mode("error").text(folder.toString())
        # part-NNNNN-... by partition, then -cNNN by file within it: the names sort in frame order
        written = [self.files.path(folder, name) for name in self.files.names(folder) if name.startswith("part-")]
        if len(written) != 1 or not self.files.fs.rename(written[0], path):
            self.files.concatenate(written, path)  # none (no rows): an empty file
        self.files.fs.delete(folder, True)
        self.files.drop_checksum(path)
        return self.record(part, *inner, frame=self.spark.read.text(path.toString()))

    def write_bytes(self, content: bytes, part: str, *inner: str) -> dict:
        """Stage one file (a report) and record its size and SHA-256."""
        self.files.overwrite(self.staged(part, *inner), content)
        entry = {"bytes": len(content), "checksum": f"sha256:{hashlib.sha256(content).hexdigest()}"}
        self.outputs["/".join([part, self.name, *inner])] = entry
        return entry

    def record(self, part: str, *inner: str, frame: DataFrame) -> dict:
        rows, checksum = content_checksum(frame)
        entry = {"rows": rows, "checksum": checksum}
        self.outputs["/".join([part, self.name, *inner])] = entry
        return entry

    def commit(self, manifest: dict) -> str:
        """Publish every staged part, then the manifest and the ``_SUCCESS`` marker."""
        if self.guard is not None:
            self.guard()
        staged_marker = self.files.path(self.staging, "manifests")
        self.files.overwrite(self.files.path(staged_marker, "manifest.json"),
                             json.dumps({**manifest, "outputs": self.outputs}, indent=2, sort_keys=True).encode())
        self.files.fs.create(self.files.path(staged_marker, "_SUCCESS")).close()
        # from here on, roll forward; the journal lists the parts, which leave the staging one by one
        self.files.create_new(self.files.path(self.staging, self.JOURNAL), json.dumps(self.parts).encode())
        self._move_in(self.staging, self.parts)
        self.files.fs.delete(self.staging, True)
        return self.files.path(self.out, "manifests", self.name).toString()

    def _move_in(self, staging, parts: list[str], withdraw: bool = True) -> None:
        """Move each staged part of ``staging`` into place and withdraw the date's outputs of
        the parts it did not produce (an ended experiment's exports, tags once images are
        off): the night is then exactly what its manifest lists. The night's marker last."""
        if not self.files.fs.exists(self.files.path(staging, "manifests")):
            return  # the marker, moved in last, is in place: the commit had finished
        # the date is being replaced: not complete until its marker is back
        self.files.fs.delete(self.files.path(self.out, "manifests", self.name), True)
        for part in sorted(set(self.PARTS) - set(parts)) if withdraw else ():
            self.files.delete(self.files.path(self.out, part, self.name))
        for part in [p for p in parts if p != "manifests"] + ["manifests"]:
            source = self.files.path(staging, part)
            if self.files.fs.exists(source):  # else: moved in before the crash
                self.files.replace(source, self.files.path(self.out, part, self.name))

    def abandon(self) -> None:
        """Drop what this run staged, unless its commit had started (the next run finishes it)."""
        if not self.files.fs.exists(self.files.path(self.staging, self.JOURNAL)):
            self.files.fs.delete(self.staging, True)
