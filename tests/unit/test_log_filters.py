"""Log noise the worker drops on purpose, and only that."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from telemetry.logs import PoolOverflowFilter
from worker.observability import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    pool_logger = logging.getLogger("urllib3.connectionpool")
    handlers, level, filters = root.handlers[:], root.level, pool_logger.filters[:]
    yield
    root.handlers[:], pool_logger.filters[:] = handlers, filters
    root.setLevel(level)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord(
        "urllib3.connectionpool", logging.WARNING, __file__, 1, message, ("conn", 16), None
    )


def test_only_the_pool_overflow_warning_is_dropped() -> None:
    """The deliberate overflow is silent; every other urllib3 warning still shows."""
    overflow = PoolOverflowFilter()
    full = "Connection pool is full, discarding connection: %s. Connection pool size: %s"
    assert not overflow.filter(record(full))
    assert overflow.filter(record("Retrying (%s) after connection broken by %s"))


def test_the_worker_installs_it_once(restored_logging: None) -> None:
    configure_logging()
    configure_logging()
    pool_logger = logging.getLogger("urllib3.connectionpool")
    assert sum(isinstance(f, PoolOverflowFilter) for f in pool_logger.filters) == 1
