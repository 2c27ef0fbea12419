"""Logs: the formats, the secret masking, the filters.

One log line per job outcome is written by the worker (worker/observability.py); this is
how every line looks: text, or JSON lines, with registered secrets masked whatever logger
produced the record, and `trace_id` / `span_id` inside a span when tracing is on.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import weakref
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from telemetry import otel
from telemetry.redact import redact

__all__ = ["BatchedStreamHandler", "PoolOverflowFilter", "RedactingFilter", "configure"]

# What the stream holds before it writes on its own, whatever the interval.
BUFFER_BYTES = 64 * 1024


class RedactingFilter(logging.Filter):
    """Mask registered secrets in every record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The message is formatted once, here: the record keeps the (masked) text, so
        # the formatter does not format the arguments a second time.
        record.msg, record.args = redact(record.getMessage()), None
        # A traceback is formatted after the filters run; format it here so it is masked
        # too (Formatter reuses exc_text when it is set).
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class PoolOverflowFilter(logging.Filter):
    """Drop urllib3's "Connection pool is full, discarding connection" warning.

    The API layer lets a burst above HTTP_POOL_SIZE (a catalog batch) open extra
    connections and close them after use, on purpose (apis/client.py: a thread waiting
    for a pooled connection would hold a job). Each of those is otherwise one warning:
    hundreds per catalog refresh, none of them actionable. Kept at LOG_LEVEL=DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Connection pool is full")


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """Standard error, flushed at most every `interval` seconds, and at once from WARNING.

    The worker writes a line per job (worker/observability.py). Written and flushed one
    at a time, that was a system call per line from each of a process's 32 threads, each
    one giving up the interpreter lock to the others, and one more read and write for
    `make run`'s supervisor: about 10% of a job's CPU, measured side by side
    (docs/performance.md, "The outcome lines, a batch at a time"). Here lines collect in
    the stream's buffer and are written together: after `interval`, when the buffer
    fills (`BUFFER_BYTES`), when a WARNING or worse comes (its lines before it first, in
    order), and when logging shuts down at exit. A process killed outright loses at most
    `interval` of INFO lines; every job's result or failure record is in Redis.

    The standard library's `MemoryHandler` buffers records but hands them to its target
    one by one, and a `StreamHandler` flushes each: the same system call per line. A
    forked child (the prefork pool) gets the buffer flushed before the fork and its own
    flushing thread after it, so no line is written twice.
    """

    def __init__(self, fd: int, interval: float, encoding: str = "utf-8") -> None:
        raw = io.FileIO(fd, "w", closefd=False)
        super().__init__(
            io.TextIOWrapper(
                io.BufferedWriter(raw, BUFFER_BYTES), encoding=encoding, errors="backslashreplace"
            )
        )
        self.interval = interval
        self._pending = False
        self._stopping = threading.Event()
        _BATCHED.add(self)
        self._start_flushing()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
        else:
            self._pending = True

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # a handler always has its lock
            self._pending = False
            super().flush()

    def close(self) -> None:
        self._stopping.set()
        self.flush()
        super().close()

    def _start_flushing(self) -> None:
        threading.Thread(target=self._flush_every_interval, name="log-flush", daemon=True).start()

    def _flush_every_interval(self) -> None:
        while not self._stopping.wait(self.interval):
            if self._pending:
                self.flush()


_BATCHED: weakref.WeakSet[BatchedStreamHandler] = weakref.WeakSet()


def _flush_before_fork() -> None:
    for handler in list(_BATCHED):
        handler.flush()


def _flush_in_forked_child() -> None:
    for handler in list(_BATCHED):
        if not handler._stopping.is_set():
            handler._start_flushing()


os.register_at_fork(before=_flush_before_fork, after_in_child=_flush_in_forked_child)


def _stderr_handler(flush_seconds: float) -> logging.StreamHandler[TextIO]:
    """Standard error, batched unless `flush_seconds` is 0 or it is not a file (a test's
    captured stream): then a line at a time."""
    if flush_seconds > 0:
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            pass
        else:
            return BatchedStreamHandler(fd, flush_seconds, sys.stderr.encoding or "utf-8")
    return logging.StreamHandler(sys.stderr)


def configure(level: str, log_format: str, flush_seconds: float = 0.0) -> None:
    """Replace Celery's logging set-up: our format, `level`, secrets masked (JSON lines
    when `log_format` is "json", trace ids on each line inside a span), lines written a
    batch at a time when `flush_seconds` is above 0."""
    handler = _stderr_handler(flush_seconds)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        text = otel.TraceContextFormatter if otel.configured() else logging.Formatter
        handler.setFormatter(
            text("[%(asctime)s %(levelname)s/%(processName)s] %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter())
    if otel.configured():
        handler.addFilter(otel.TraceContextFilter())
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, BatchedStreamHandler):
            replaced.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # Celery logs "received" and "succeeded in ...: <result>" for every job; the job
        # outcome line (worker/observability.py) replaces both (one line per job), and its
        # errors still show.
        logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        pool_logger = logging.getLogger("urllib3.connectionpool")
        if not any(isinstance(f, PoolOverflowFilter) for f in pool_logger.filters):
            pool_logger.addFilter(PoolOverflowFilter())
