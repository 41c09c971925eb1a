"""The console of a ``salerank`` command: salerank's own lines and errors, nothing else.

Everything else a run says goes to its log file, ``OUT/logs/salerank-COMMAND-TIMESTAMP-PID.log``
(a local temporary file when OUT is not local), named at the end of the run:

- Python loggers other than ``salerank`` (MLflow and alembic, py4j, absl, TensorFlow,
  matplotlib) below ERROR, and Python warnings (Keras, TensorFlow);
- what native code writes to the process's stderr: TensorFlow's C++ lines (oneDNN, CPU
  instructions), and the console of a driver JVM started by the run (Spark's log4j lines
  and banners, and in local mode the Python workers' stderr). Under spark-submit the JVM
  was there before us, and its log4j configuration is the user's;
- TensorFlow's C++ INFO and WARNING lines are also silenced through the environment
  (``spark.ENVIRONMENT``), which the executors get too.

A failure's traceback and error messages still reach stderr.
"""
from __future__ import annotations

import datetime as dt
import faulthandler
import io
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..storage import FileSystem, is_local, join, local_path
from .spark import set_environment

log = logging.getLogger("salerank")

CONSOLE_FORMAT = "%(name)s: %(message)s"  # "salerank: stage load ..."
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(command: str, out: str | None) -> str:
    """``OUT/logs/salerank-COMMAND-TIMESTAMP-PID.log`` (UTC) when OUT is local, else a new
    local temporary file of the same name."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"salerank-{command}-{stamp}-{os.getpid()}"  # two runs may start in the same second
    if out is not None and is_local(out):
        folder = Path(local_path(out)) / "logs"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / f"{name}.log")
        except OSError:  # a plain path that Spark resolves elsewhere (fs.defaultFS=hdfs://...)
            pass
    handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
    os.close(handle)
    return path


def _keep_beside_out(path: str, out: str | None) -> str:
    """A log kept in a local temporary file (OUT on HDFS, S3A, ...) is copied to
    ``OUT/logs/`` when a SparkSession is there to reach OUT; where the log now is."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if out is None or spark is None or not path.startswith(tempfile.gettempdir()):
        return path
    target = join(out, "logs", Path(path).name)
    try:
        FileSystem(spark, target).write_bytes(target, Path(path).read_bytes())
        return target
    except Exception as err:  # the run's outcome must not depend on its log's copy
        log.warning("the log %s could not be copied to %s: %s", path, target, str(err).splitlines()[0])
        return path


def _salerank_or_error(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] == "salerank" or record.levelno >= logging.ERROR


@contextmanager
def console(command: str, out: str | None):
    """Inside it, the console shows only salerank's log lines and errors; the rest goes to
    the log file (its path is yielded and logged on leaving, on failure as on success)."""
    set_environment()  # before TensorFlow or MLflow is imported
    path = log_path(command, out)
    with _native_stderr_to(path):
        to_file = logging.FileHandler(path, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(FILE_FORMAT))
        to_console = logging.StreamHandler(sys.stderr)
        to_console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        to_console.addFilter(_salerank_or_error)
        root, level = logging.getLogger(), logging.getLogger().level
        root.addHandler(to_file)
        root.addHandler(to_console)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings" -> the file
        try:  # a fatal error's trace on the console, not only in the file
            faulthandler.enable(sys.stderr)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass  # sys.stderr is no file (captured)
        log.info("details of this run in %s", path)
        try:
            yield path
        finally:
            faulthandler.disable()  # before the console's duplicate is closed
            path = _keep_beside_out(path, out)
            log.info("details in %s", path)
            logging.captureWarnings(False)
            for handler in (to_file, to_console):
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)


@contextmanager
def _native_stderr_to(path: str):
    """Point file descriptor 2 at the log file, and Python's ``sys.stderr`` at the console.

    What native code writes to fd 2 (TensorFlow's and absl's C++ logging, which
    ``TF_CPP_MIN_LOG_LEVEL`` no longer silences, and a JVM started meanwhile: Spark's log4j
    console, and in local mode the Python workers' stderr) then goes to the file, while
    Python's own writes (salerank's log lines, error messages, tracebacks) stay on the console.
    Left as it is when ``sys.stderr`` is not fd 2 (tests capturing it, embedding programs).
    """
    try:
        on_fd_2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        on_fd_2 = False
    if not on_fd_2:
        yield
        return
    python_stderr = sys.stderr
    python_stderr.flush()
    terminal = os.dup(2)
    with open(path, "ab") as file:
        os.dup2(file.fileno(), 2)
    sys.stderr = open(terminal, "w", buffering=1, encoding=python_stderr.encoding,
                      errors=python_stderr.errors)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        sys.stderr.close()  # and with it the duplicate of the terminal
        sys.stderr = python_stderr
