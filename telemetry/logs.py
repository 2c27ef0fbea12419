"""Logs: the formats, the secret masking, the filters.

One log line per job outcome is written by the worker (worker/observability.py); this is
how every line looks: text, or JSON lines, with registered secrets masked whatever logger
produced the record, and `trace_id` / `span_id` inside a span when tracing is on.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from telemetry import otel
from telemetry.redact import redact

__all__ = ["PoolOverflowFilter", "RedactingFilter", "configure"]


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


def configure(level: str, log_format: str) -> None:
    """Replace Celery's logging set-up: our format, `level`, secrets masked (JSON lines
    when `log_format` is "json", trace ids on each line inside a span)."""
    handler = logging.StreamHandler(sys.stderr)
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
