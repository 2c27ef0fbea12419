"""Secrets are masked in log messages and in the tracebacks logged with them."""

from __future__ import annotations

import logging
import sys

from telemetry.logs import RedactingFilter
from telemetry.redact import register_secret


def test_message_and_traceback_are_masked() -> None:
    """A token inside an exception's text does not survive into the formatted line."""
    secret = "tok-9f8e7d6c5b4a-never-logged"
    register_secret(secret)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    try:
        raise RuntimeError(f"upstream said Authorization: Token {secret}")
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "failed with %s", (secret,), exc_info=None
        )
        record.exc_info = sys.exc_info()
    assert handler.filter(record)
    text = handler.format(record)
    assert "RuntimeError" in text
    assert secret not in text
    assert "***" in text


def test_a_record_is_formatted_once() -> None:
    """The filter leaves the record its formatted text and no arguments, so the formatter
    does not format them again (one job outcome line each, on every job)."""
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "job %s id=%s", ("OK", 7), None)
    assert RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("job OK id=7", None)
    assert logging.Formatter("%(message)s").format(record) == "job OK id=7"
