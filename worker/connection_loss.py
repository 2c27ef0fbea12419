"""A lost broker connection is expected (a RabbitMQ node dies, a network blip): the
worker reconnects, to the next node of a failover list, and the broker delivers again
what was not acknowledged. Its log says so in one line per event, without tracebacks.

Three things would otherwise print a traceback or a page of text for it:

- kombu's `Message.ack_log_error` logs CRITICAL with a traceback for each job that
  finishes after the connection it came on is gone (its late acknowledgement cannot be
  sent). The job is not lost: the broker requeued it when the connection dropped, and it
  runs again. That record becomes one WARNING saying so.
- Celery's event loop, cleaning up after the connection broke, reads the dead socket
  once more and logs "Error cleaning up after event loop" with two tracebacks. That
  becomes one WARNING too (the consumer's own "Connection to broker lost" line follows).
- Celery warns (`CPendingDeprecationWarning`, a dozen lines) on every connection loss
  while `worker_cancel_long_running_tasks_on_connection_loss` is off, which it is for
  the threads pool on purpose (worker/app.py says why). Celery sets warnings filters
  of its own after the logging set-up, so this one is dropped as a log record.

Any other failure keeps its traceback.
"""

from __future__ import annotations

import logging
import socket

from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import OperationalError

#: What a dead connection raises on an acknowledgement.
CONNECTION_ERRORS = (AmqpConnectionError, OperationalError, OSError, socket.error)
ACK_LOGGER = "celery.worker.request"
LOOP_LOGGER = "celery.worker.loops"
WARNINGS_LOGGER = "py.warnings"


class LostAckFilter(logging.Filter):
    """An acknowledgement lost with its connection: one WARNING line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if str(record.msg).startswith("Couldn't ack") and isinstance(exc, CONNECTION_ERRORS):
            tag = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = (
                "job not acknowledged (delivery tag %s): the broker connection was lost "
                "(%s); the broker delivers it again"
            )
            record.args = (tag, type(exc).__name__)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class LoopCleanupFilter(logging.Filter):
    """The event loop's clean-up meeting the dead socket again: one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if str(record.msg).startswith("Error cleaning up") and isinstance(exc, CONNECTION_ERRORS):
            record.msg, record.args = (
                "event loop reset after the broker connection broke (%s)",
                (type(exc).__name__,),
            )
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class CancelSettingWarningFilter(logging.Filter):
    """Celery's warning about the cancel-on-connection-loss setting: dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "worker_cancel_long_running_tasks_on_connection_loss" not in record.getMessage()


def install() -> None:
    """Add each filter to its logger, once."""
    for name, kind in (
        (ACK_LOGGER, LostAckFilter),
        (LOOP_LOGGER, LoopCleanupFilter),
        (WARNINGS_LOGGER, CancelSettingWarningFilter),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, kind) for existing in logger.filters):
            logger.addFilter(kind())
