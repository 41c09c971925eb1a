"""The backbone in a child process of its own, which exits once it has had no work for a while.

A Spark Python worker is reused from task to task for the rest of the run: a backbone loaded
in it would keep TensorFlow's memory (3.2 GB per worker, measured during an H&M backtest)
long after the photos are tagged. Here the worker only forwards each chunk of photos to a
child process (``python -m salerank.image_labelling.backbone_process``) over a pipe; the
child loads the backbone once, serves every task that comes while it is busy, and exits after
``idle_seconds`` without a request (or when its parent is gone), taking TensorFlow with it.
A request that finds it gone starts a new one. POSIX only (pipes passed by descriptor):
Linux and macOS, where Spark's Python workers run.
"""
from __future__ import annotations

import os
import pickle
import selectors
import struct
import subprocess
import sys
import threading
import traceback

from .tagger import Backbone, Embeddings

_LENGTH = struct.Struct("!Q")


def _send(fd: int, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int):
    """The next message, or None when the other end has closed the pipe."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    data = _read_exactly(fd, _LENGTH.unpack(header)[0])
    if data is None:
        return None
    return pickle.loads(data)


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class BackboneProcess:
    """:class:`~salerank.image_labelling.tagger.Backbone`'s ``embed_images``, computed in a child
    process that exits after ``idle_seconds`` without a request."""

    def __init__(self, name: str, cache_dir: str | None, idle_seconds: float):
        self.name, self.cache_dir, self.idle_seconds = name, cache_dir, idle_seconds
        self._child: subprocess.Popen | None = None
        self._to_child = self._from_child = -1

    def embed_images(self, images: list[tuple[str, bytes | None]]) -> Embeddings:
        for attempt in range(2):  # the child may have just timed out: start another, once
            self._ensure_running()
            try:
                _send(self._to_child, images)
                answer = _receive(self._from_child)
            except OSError:  # BrokenPipeError: it had exited
                answer = None
            except BaseException:  # half a message may be left in the pipes: never reuse them
                self._stop()
                raise
            if answer is not None:
                if isinstance(answer, BaseException):
                    raise answer
                return answer
            self._stop()
        raise RuntimeError(f"the backbone process ({self.name}) exited while embedding photos "
                           f"(exit code {self._last_exit}; its error is in the worker's stderr)")

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def _ensure_running(self) -> None:
        if self._child is not None and self._child.poll() is None:
            return
        self._stop()
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__, self.name, self.cache_dir or "", str(self.idle_seconds),
             str(requests_read), str(answers_write)],
            pass_fds=(requests_read, answers_write), stdin=subprocess.DEVNULL)
        os.close(requests_read)
        os.close(answers_write)
        self._to_child, self._from_child = requests_write, answers_read
        # reaped as soon as it exits, not left a zombie until the next request
        threading.Thread(target=self._child.wait, daemon=True).start()
        ready = _receive(self._from_child)  # the backbone loaded, or why it could not
        if not isinstance(ready, str):
            self._stop()
            raise ready if isinstance(ready, BaseException) else RuntimeError(
                f"the backbone process ({self.name}) exited before loading the backbone "
                f"(exit code {self._last_exit}; its error is in the worker's stderr)")

    _last_exit: int | None = None

    def _stop(self) -> None:
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                os.close(fd)
        self._to_child = self._from_child = -1
        if self._child is not None:
            self._last_exit = self._child.wait()  # it exits on the closed pipe
            self._child = None

    def __del__(self):
        try:
            self._stop()
        except Exception:  # interpreter shutdown: the child sees its pipe close anyway
            pass


def serve(name: str, cache_dir: str | None, idle_seconds: float, requests: int, answers: int) -> None:
    """The child's loop: say it is ready (or why not), then embed each request until none
    comes for ``idle_seconds``. Errors go back to the caller with their traceback."""
    try:
        backbone = Backbone(name, cache_dir)
    except Exception:
        _send(answers, RuntimeError(f"the backbone {name} could not be loaded:\n{traceback.format_exc()}"))
        return
    _send(answers, "ready")
    waiting = selectors.DefaultSelector()  # not select.select: the pipe's number may be above 1023
    waiting.register(requests, selectors.EVENT_READ)
    while waiting.select(idle_seconds):
        images = _receive(requests)
        if images is None:  # the parent closed its end, or is gone
            return
        try:
            answer = backbone.embed_images(images)
        except Exception:
            answer = RuntimeError(f"embedding photos failed:\n{traceback.format_exc()}")
        _send(answers, answer)


if __name__ == "__main__":
    name, cache_dir, idle, requests, answers = sys.argv[1:]
    serve(name, cache_dir or None, float(idle), int(requests), int(answers))
    os._exit(0)  # TensorFlow's own teardown takes seconds and frees nothing the exit does not
