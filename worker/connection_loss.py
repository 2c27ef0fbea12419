"""A lost broker connection is expected (a RabbitMQ node dies, a network blip): the
worker reconnects, to the next node of a failover list, and the broker delivers again
what was not acknowledged. Its log says so in one line per event, without tracebacks.

Two things would otherwise print a traceback or a page of text for it:

- kombu's `Message.ack_log_error` logs CRITICAL with a traceback for each job that
  finishes after the connection it came on is gone (its late acknowledgement cannot be
  sent). The job is not lost: the broker requeued it when the connection dropped, and it
  runs again. That record becomes one WARNING saying so.
- Celery warns (`CPendingDeprecationWarning`, a dozen lines) on every connection loss
  while `worker_cancel_long_running_tasks_on_connection_loss` is off, which it is for
  the threads pool on purpose (worker/app.py says why).

Any other failure to acknowledge keeps its traceback.
"""

from __future__ import annotations

import logging
import socket
import warnings

from amqp.exceptions import ConnectionError as AmqpConnectionError
from celery.exceptions import CPendingDeprecationWarning
from kombu.exceptions import OperationalError

#: What a dead connection raises on an acknowledgement.
CONNECTION_ERRORS = (AmqpConnectionError, OperationalError, OSError, socket.error)
ACK_LOGGER = "celery.worker.request"


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


def install() -> None:
    """Add the filter once, and silence Celery's warning about the cancel setting."""
    logger = logging.getLogger(ACK_LOGGER)
    if not any(isinstance(existing, LostAckFilter) for existing in logger.filters):
        logger.addFilter(LostAckFilter())
    warnings.filterwarnings(
        "ignore",
        message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )
