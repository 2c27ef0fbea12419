"""An expected broker connection loss is one log line, without a traceback."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError

from worker.connection_loss import (
    CancelSettingWarningFilter,
    LoopCleanupFilter,
    LostAckFilter,
)


def record(
    name: str, msg: str, args: tuple[object, ...], exc: BaseException | None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, logging.CRITICAL, __file__, 1, msg, args, exc_info)


def test_a_lost_ack_is_a_warning_without_traceback() -> None:
    """kombu's "Couldn't ack" after the connection died: one WARNING, no exc_info."""
    lost = record("celery.worker.request", "Couldn't ack %r, reason:%r", (41, "x"),
                  OperationalError("connection already closed"))  # fmt: skip
    assert LostAckFilter().filter(lost)
    assert (lost.levelname, lost.exc_info) == ("WARNING", None)
    assert "delivery tag 41" in lost.getMessage()


def test_another_ack_failure_keeps_its_traceback() -> None:
    """Only connection errors are expected; anything else stays CRITICAL with its trace."""
    other = record("celery.worker.request", "Couldn't ack %r, reason:%r", (1, "x"), ValueError("?"))
    assert LostAckFilter().filter(other)
    assert other.levelname == "CRITICAL"
    assert other.exc_info is not None


def test_the_event_loop_cleanup_after_a_reset_is_one_line() -> None:
    cleanup = record("celery.worker.loops", "Error cleaning up after event loop: %r", ("x",),
                     ConnectionResetError(104, "Connection reset by peer"))  # fmt: skip
    assert LoopCleanupFilter().filter(cleanup)
    assert (cleanup.levelname, cleanup.exc_info) == ("WARNING", None)


def test_celerys_cancel_setting_warning_is_dropped() -> None:
    warning = record(
        "py.warnings", "%s", ("... worker_cancel_long_running_tasks_on_connection_loss ...",), None
    )
    assert not CancelSettingWarningFilter().filter(warning)
