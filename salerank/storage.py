"""Storage is a URI: every path of data or outputs goes through the Hadoop FileSystem API.

A path is a local path (``demo-out``, ``/data/in``) or a Hadoop URI (``file:///data/in``,
``hdfs://nn/sales``, ``s3a://bucket/out``, ``abfs://...``, ``gs://...``). What works on the
local file system therefore works on HDFS, S3A and the rest, from the driver; executors read
data only through Spark's own sources (Parquet, CSV, ``binaryFile``).
"""
from __future__ import annotations

import re
import uuid
from urllib.parse import urlparse

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def join(base: str, *children: str) -> str:
    """``base/child/...`` with one ``/`` between parts, keeping a URI's authority intact
    (``str(Path("s3a://bucket") / "x")`` would drop a slash and with it the bucket)."""
    parts = [str(base).rstrip("/") or "/"]
    parts += [str(c).strip("/") for c in children if str(c).strip("/")]
    return "/".join(parts) if parts[0] != "/" else "/" + "/".join(parts[1:])


def scheme(path: str) -> str | None:
    """The URI scheme (``hdfs``, ``s3a``, ``file``), or None for a plain local path."""
    text = str(path)
    if re.match(r"^[A-Za-z]:[\\/]", text):  # a Windows drive letter is no scheme
        return None
    return urlparse(text).scheme.lower() if _SCHEME.match(text) else None


def is_local(path: str) -> bool:
    """True for a plain path and for ``file:`` URIs: what Python itself can also open."""
    return scheme(path) in (None, "file")


def resolves_locally(path: str) -> bool:
    """Whether ``path`` is on this machine's file system as Hadoop resolves it: a plain path
    is on ``fs.defaultFS`` of the running SparkSession (HDFS on a YARN cluster), not
    necessarily local. Without a session, as :func:`is_local`."""
    if scheme(path) is not None:
        return is_local(path)
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    return spark is None or FileSystem(spark, path).fs.getScheme() == "file"


def local_path(path: str) -> str:
    """The local file system path of a plain path or a ``file:`` URI."""
    if not is_local(path):
        raise ValueError(f"{path} is not on the local file system")
    return urlparse(str(path)).path if scheme(path) == "file" else str(path)


class FileSystem:
    """The Hadoop file system of a path, seen from the driver.

    Parameters
    ----------
    spark : the SparkSession whose Hadoop configuration (credentials, endpoints) is used.
    path : any path on the file system wanted.
    """

    def __init__(self, spark, path: str):
        self.jvm = spark.sparkContext._jvm
        self._gateway = spark.sparkContext._gateway
        self.fs = self.path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        self.fs.setWriteChecksum(False)  # no hidden .crc beside the files handed to the website

    def path(self, first, *children: str):
        """A Hadoop path: ``first`` (a string or a path) joined with each child name."""
        path = self.jvm.org.apache.hadoop.fs.Path(str(first)) if not hasattr(first, "getName") else first
        for child in children:
            path = self.jvm.org.apache.hadoop.fs.Path(path, child)
        return path

    def qualified(self, path: str) -> str:
        """``path`` as a full URI (``file:/abs/...``, ``hdfs://nn/...``): a relative local path is
        resolved against the driver's working directory."""
        return self.fs.makeQualified(self.path(path)).toString()

    def exists(self, path) -> bool:
        return bool(self.fs.exists(self.path(path)))

    def is_dir(self, path) -> bool:
        return bool(self.fs.exists(self.path(path)) and self.fs.getFileStatus(self.path(path)).isDirectory())

    def is_file(self, path) -> bool:
        return bool(self.fs.exists(self.path(path)) and self.fs.getFileStatus(self.path(path)).isFile())

    def names(self, folder) -> list[str]:
        """The names in ``folder``, sorted (none when it does not exist)."""
        if not self.fs.exists(self.path(folder)):
            return []
        return sorted(s.getPath().getName() for s in self.fs.listStatus(self.path(folder)))

    def read_bytes(self, path) -> bytes:
        stream = self.fs.open(self.path(path))
        try:
            return bytes(self.jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def read_text(self, path) -> str:
        return self.read_bytes(path).decode("utf-8")

    def write_bytes(self, path, content: bytes) -> None:
        """Write a whole file: staged beside the target and renamed over it, so a reader
        never sees half of it."""
        target = self.path(path)
        staged = self.path(target.getParent(), f"_tmp-{target.getName()}-{uuid.uuid4().hex[:12]}")
        _fill(self.fs.create(staged, True), content)
        self.replace(staged, target)

    def create_new(self, path, content: bytes) -> bool:
        """Create ``path`` with ``content`` only if it does not exist yet; False when it
        already existed. Atomic on HDFS and the local file system: of two callers at once,
        exactly one gets True (on S3A only with conditional writes)."""
        try:
            if self.fs.getScheme() == "file":
                self._create_new_local(self.path(path), content)
            else:  # S3A's conditional write fails at close, inside _fill
                _fill(self.fs.create(self.path(path), False), content)
            return True
        except Exception as err:  # py4j wraps the Java exception
            # HDFS says AlreadyBeingCreated while a crashed writer's lease on the file lasts
            if any(sign in str(err) for sign in ("FileAlreadyExists", "already exists", "AlreadyBeingCreated",
                                                 "PreconditionFailed")):
                return False
            raise

    def _create_new_local(self, path, content: bytes) -> None:
        """Hadoop's local ``create(path, false)`` checks that the file is absent, then opens it
        truncating: two callers can both succeed. An exclusive create (``O_EXCL``) cannot."""
        self.fs.mkdirs(path.getParent())
        nio = self.jvm.java.nio.file
        options = self._gateway.new_array(nio.OpenOption, 2)
        options[0], options[1] = nio.StandardOpenOption.CREATE_NEW, nio.StandardOpenOption.WRITE
        nio.Files.write(self.fs.pathToFile(path).toPath(), bytearray(content), options)

    def overwrite(self, path, content: bytes) -> None:
        """Rewrite a file in place: unlike :meth:`write_bytes` the path never stops existing
        (no one can create it in between), but a reader may see it half written."""
        _fill(self.fs.create(self.path(path), True), content)

    def rename(self, source, target) -> bool:
        """Move ``source`` to ``target`` in one step; False when ``source`` is gone (another
        caller moved it first)."""
        try:
            return bool(self.fs.rename(self.path(source), self.path(target)))
        except Exception as err:  # the local file system falls back to a copy, which raises
            if "FileNotFound" in str(err):
                return False
            raise

    def concatenate(self, parts: list, target) -> None:
        """Create ``target`` from the bytes of ``parts``, one after the other, streamed by the
        JVM (nothing passes through Python)."""
        out = self.fs.create(self.path(target), False)
        try:
            for part in parts:
                stream = self.fs.open(self.path(part))
                try:
                    self.jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, out, 1 << 22, False)
                finally:
                    stream.close()
        finally:
            out.close()

    def modified(self, path) -> float:
        """The time ``path`` was last written, in seconds since the epoch."""
        return self.fs.getFileStatus(self.path(path)).getModificationTime() / 1000

    def delete(self, path, recursive: bool = True) -> None:
        if self.fs.exists(self.path(path)):
            self.fs.delete(self.path(path), recursive)

    def mkdirs(self, path) -> None:
        self.fs.mkdirs(self.path(path))

    def drop_checksum(self, path) -> None:
        """Delete the hidden ``.NAME.crc`` that the local file system keeps beside a file."""
        path = self.path(path)
        crc = self.path(path.getParent(), f".{path.getName()}.crc")
        if self.fs.exists(crc):
            self.fs.delete(crc, False)

    def replace(self, staged, target) -> None:
        """Move ``staged`` to ``target``, replacing what was there (kept aside until then)."""
        staged, target = self.path(staged), self.path(target)
        self.fs.mkdirs(target.getParent())
        old = self.path(target.getParent(), f"_old-{target.getName()}-{uuid.uuid4().hex[:12]}")
        if self.fs.exists(target) and not self.fs.rename(target, old):
            raise OSError(f"{target}: could not move the previous version aside")
        if not self.fs.rename(staged, target):
            if self.fs.exists(old):
                self.fs.rename(old, target)
            raise OSError(f"{target}: could not move the new version into place")
        self.fs.delete(old, True)


def _fill(stream, content: bytes) -> None:
    """Write ``content`` to a Hadoop output stream and close it."""
    try:
        stream.write(bytearray(content))
    finally:
        stream.close()
