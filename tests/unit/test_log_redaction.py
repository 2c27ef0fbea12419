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
