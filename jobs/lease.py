"""One run at a time: a lease on a name (a date's nightly run, the image cache) in OUT.

A run that writes into OUT first takes the lease ``OUT/_leases/NAME.json``: a small JSON file
created atomically through the Hadoop FileSystem API (``salerank.storage.FileSystem.create_new``)
with the holder's owner (user), host, pid, command, start and heartbeat (UTC, ISO 8601). While it
runs, a daemon thread rewrites the heartbeat every ``lease.heartbeat_seconds`` in place: the file
never stops existing, so no one else can create it in between. A reader may catch it half
rewritten; it reads again and, if still unreadable, counts it as held.

- A second run of the name raises :class:`LeaseHeldError` (exit status 2 on the command line),
  naming the holder; with ``wait=True`` it polls every ``lease.poll_seconds`` until it is free.
- A lease whose heartbeat is older than ``lease.timeout_seconds`` (or, on the holder's own
  host, whose process has ended) belonged to a dead run. It is taken over: moved aside with one
  rename (of several contenders, only one rename can succeed), then created afresh. The dead
  run's own recovery (``Night`` finishes or drops its staging) then runs under the new lease.
- The lease is released (deleted) when the ``with`` block ends, also on an exception, and only
  by its holder: it checks its token first. A thread that holds a lease may take it again
  (the image stage inside training): only the outermost ``with`` releases it.

Limits: heartbeats are compared with the reader's clock, so hosts must keep their clocks within
a small fraction of the timeout. On object stores without an atomic create (S3A without
conditional writes, ``fs.s3a.create.conditional.enabled``) two runs can both create the file:
there the lease is best-effort and the scheduler must not start two runs of a date.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from ..conf import ConfigError
from ..storage import FileSystem, join

log = logging.getLogger("salerank")

FOLDER = "_leases"
READ_TRIES, READ_PAUSE = 5, 0.05  # a file caught mid-rewrite reads empty or cut short: again

_held: dict = {}  # (lease path, thread id) -> the Lease that thread holds
_held_lock = threading.Lock()


class LeaseHeldError(RuntimeError):
    """Another live run holds the lease: nothing was done.

    Attributes
    ----------
    path : the lease file.
    holder : the :class:`Holder` found in it.
    """

    def __init__(self, path: str, holder: "Holder", timeout: float):
        self.path, self.holder = path, holder
        after = _iso(holder.heartbeat() + timeout)
        super().__init__(
            f"{path} is held by another run: {holder.describe()}. Wait for it to finish, or run "
            f"again with --wait to wait for it. If that run has died, its lease is taken over once "
            f"its heartbeat is older than lease.timeout_seconds ({timeout:g} s): after {after}.")


@dataclass(frozen=True)
class Holder:
    """What a lease file says: ``record`` is None when it could not be read (mid-rewrite or damaged)."""

    raw: bytes
    record: dict | None
    modified: float  # the file's modification time, seconds since the epoch

    @property
    def token(self) -> str | None:
        return (self.record or {}).get("token")

    def heartbeat(self) -> float:
        """The last heartbeat in seconds since the epoch (the file's time when unreadable)."""
        try:
            return dt.datetime.fromisoformat(self.record["heartbeat"]).timestamp()
        except (TypeError, KeyError, ValueError):
            return self.modified

    def describe(self) -> str:
        if self.record is None:
            return f"an unreadable lease file, last written {_iso(self.modified)}"
        r = self.record
        return (f"owner {r.get('owner')} on host {r.get('host')}, pid {r.get('pid')} "
                f"({r.get('command')}), started {r.get('started')}, last heartbeat {r.get('heartbeat')}")

    def stale_reason(self, timeout: float) -> str | None:
        """Why the holder is dead, or None while it may be alive."""
        age = time.time() - self.heartbeat()
        if age > timeout:
            return f"its last heartbeat is {age:.0f} s old (lease.timeout_seconds: {timeout:g})"
        if self._ended_here():
            return "its process on this host has ended"
        return None

    def _ended_here(self) -> bool:
        """True when the holder ran on this host, in this pid namespace (a container with the
        same host name sees other pids), and no process has its pid any more."""
        r = self.record or {}
        if r.get("host") != socket.gethostname() or r.get("pid_namespace") != _pid_namespace():
            return False
        try:
            os.kill(int(r["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, TypeError, ValueError, OverflowError):
            return False  # another user's live process, or no pid to check
        return False


class LeaseLostError(RuntimeError):
    """This run's lease was taken over while it ran: it must not publish."""


class Lease:
    """A lease this process holds; a daemon thread renews its heartbeat until :meth:`release`."""

    def __init__(self, files: FileSystem, path: str, record: dict, heartbeat_seconds: float):
        self.files, self.path, self.record = files, path, record
        self.lost = False  # set when another run took it over (this one stalled past the timeout)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,),
                                        name=f"lease {record['name']}", daemon=True)
        self._thread.start()

    @property
    def token(self) -> str:
        return self.record["token"]

    def _beat(self, seconds: float) -> None:
        while not self._stop.wait(seconds) and not self.lost:
            try:
                self.renew()
            except Exception as err:  # a passing storage error: the next beat tries again
                log.warning("lease %s: heartbeat failed: %s", self.path, err)

    def renew(self) -> None:
        """Rewrite the heartbeat in place, if the lease is still this run's."""
        current = read_lease(self.files, self.path)
        if current is None:  # taken over (and perhaps released since), or deleted by hand
            self.lost = True
            log.error("lease %s vanished while this run still held it: another run may have taken "
                      "it over; this run will not publish", self.path)
            return
        if current.record is None:
            return  # only this run rewrites it: a contender is writing its own, seen next beat
        if current.token != self.token:
            self.lost = True
            log.error("lease %s was taken over by %s while this run still held it",
                      self.path, current.describe())
            return
        self.files.overwrite(self.path, _encode(self._stamped()))

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when this run no longer holds the lease (call it
        before publishing: another run of the name may be publishing now)."""
        if self.lost:
            raise LeaseLostError(f"{self.path}: this run lost its lease (it stalled for longer than "
                                 "lease.timeout_seconds and another run took over): nothing was published")

    def _stamped(self) -> dict:
        self.record = {**self.record, "heartbeat": _now()}
        return self.record

    def release(self) -> None:
        """Stop the heartbeat and delete the lease file if it is still this run's."""
        self._stop.set()
        self._thread.join()
        current = read_lease(self.files, self.path)
        if current is not None and current.token == self.token:
            self.files.delete(self.path, recursive=False)


@contextmanager
def hold(spark, out_dir: str, name: str, config: dict, wait: bool = False):
    """Hold the lease ``OUT/_leases/NAME.json`` for the ``with`` block; see the module docstring.

    Parameters
    ----------
    spark : the SparkSession whose Hadoop configuration reaches OUT.
    out_dir : the output folder (any Hadoop path).
    name : what is leased, e.g. ``nightly-run_date=2026-03-14`` or ``image_cache``.
    config : the configuration; its ``lease`` section gives the timings.
    wait : wait for a live holder to finish instead of raising :class:`LeaseHeldError`.

    Yields
    ------
    Lease
        The lease held (the same one when this thread already held it).

    Raises
    ------
    LeaseHeldError
        When another live run holds it and ``wait`` is false.
    ConfigError
        When the ``lease`` timings are not positive or the heartbeat is not well inside the timeout.
    """
    settings = lease_settings(config)
    files = FileSystem(spark, out_dir)
    path = files.qualified(join(out_dir, FOLDER, f"{name}.json"))
    key = (path, threading.get_ident())
    if key in _held:  # already this thread's: only the outermost block releases it
        yield _held[key]
        return
    lease = _acquire(files, path, name, settings, wait)
    with _held_lock:
        _held[key] = lease
    try:
        yield lease
    finally:
        with _held_lock:
            del _held[key]
        lease.release()


def lease_settings(config: dict) -> dict:
    """The ``lease`` section, checked."""
    settings = config["lease"]
    for key in ("timeout_seconds", "heartbeat_seconds", "poll_seconds"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"lease.{key} must be a positive number of seconds, got {value!r}")
    if settings["heartbeat_seconds"] * 2 > settings["timeout_seconds"]:
        # a beat or two may come late: a live run must never look dead
        raise ConfigError(f"lease.heartbeat_seconds ({settings['heartbeat_seconds']}) must be at most "
                          f"half of lease.timeout_seconds ({settings['timeout_seconds']})")
    return settings


def _acquire(files: FileSystem, path: str, name: str, settings: dict, wait: bool) -> Lease:
    """Create the lease file, taking over a dead holder's; wait for or refuse a live one."""
    started = _now()
    record = {"name": name, "owner": _user(), "host": socket.gethostname(), "pid": os.getpid(),
              "pid_namespace": _pid_namespace(), "command": " ".join(sys.argv)[:500],
              "started": started, "heartbeat": started, "token": uuid.uuid4().hex}
    announced = object()  # the holder last logged while waiting
    while True:
        record["heartbeat"] = _now()
        if files.create_new(path, _encode(record)):
            return Lease(files, path, record, settings["heartbeat_seconds"])
        holder = read_lease(files, path)
        if holder is None:
            continue  # released in between: try again at once
        reason = holder.stale_reason(settings["timeout_seconds"])
        if reason:
            _take_over(files, path, holder, reason)
            continue
        if not wait:
            raise LeaseHeldError(path, holder, settings["timeout_seconds"])
        if holder.token != announced:
            log.info("waiting for the lease %s, held by %s", path, holder.describe())
            announced = holder.token
        time.sleep(settings["poll_seconds"])


def _take_over(files: FileSystem, path: str, holder: Holder, reason: str) -> None:
    """Move a dead holder's lease aside, so that the caller can create its own.

    One rename moves it, so of several contenders only one succeeds. If what was moved is not
    what was judged dead (its holder renewed it, or another run took it over in between), it is
    put back.
    """
    target = files.path(path)
    aside = files.path(target.getParent(), f"_stale-{uuid.uuid4().hex[:12]}-{target.getName()}")
    if not files.rename(target, aside):
        return  # another contender moved it first
    moved = read_lease(files, aside)
    if moved is None:
        return
    if moved.raw == holder.raw:
        log.warning("taking over the lease %s from %s: %s", path, holder.describe(), reason)
    else:
        files.create_new(path, moved.raw)  # fails only if its holder has already re-created it
    files.delete(aside, recursive=False)


def read_lease(files: FileSystem, path) -> Holder | None:
    """The lease file at ``path``, or None when there is none."""
    for attempt in range(READ_TRIES):
        try:
            raw, modified = files.read_bytes(path), files.modified(path)
        except Exception as err:  # py4j wraps java.io.FileNotFoundException
            if "FileNotFound" in str(err):
                return None
            raise
        try:
            record = json.loads(raw)
            if isinstance(record, dict) and "token" in record:
                return Holder(raw, record, modified)
        except ValueError:
            pass
        if attempt < READ_TRIES - 1:
            time.sleep(READ_PAUSE)
    return Holder(raw, None, modified)


def _encode(record: dict) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True).encode()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        return str(os.getuid())


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
