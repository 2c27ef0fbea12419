"""Log lines written a batch at a time (telemetry/logs.py, BatchedStreamHandler)."""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Iterator

import pytest

from telemetry.logs import BatchedStreamHandler


class _Pipe:
    """The handler's file descriptor, and what reached the other end so far."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.seen = b""

    def arrived(self, timeout: float) -> bytes:
        """Everything written so far, waiting at most `timeout` for the first bytes."""
        ready, _, _ = select.select([self.read_end], [], [], timeout)
        while ready:
            self.seen += os.read(self.read_end, 65536)
            ready, _, _ = select.select([self.read_end], [], [], 0)
        return self.seen

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


@pytest.fixture
def pipe() -> Iterator[_Pipe]:
    opened = _Pipe()
    yield opened
    opened.close()


def _logger(handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.batching.{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_info_lines_wait_for_the_interval_then_come_together(pipe: _Pipe) -> None:
    handler = BatchedStreamHandler(pipe.write_end, interval=0.5)
    try:
        log = _logger(handler)
        for n in range(3):
            log.info("job SUCCESS id=%d", n)
        assert pipe.arrived(timeout=0.05) == b""  # nothing yet: one write per batch
        assert pipe.arrived(timeout=5) == b"INFO job SUCCESS id=0\nINFO job SUCCESS id=1\n" + (
            b"INFO job SUCCESS id=2\n"
        )
    finally:
        handler.close()


def test_a_warning_is_written_at_once_after_the_lines_before_it(pipe: _Pipe) -> None:
    handler = BatchedStreamHandler(pipe.write_end, interval=60)
    try:
        log = _logger(handler)
        log.info("job SUCCESS id=1")
        log.warning("job RETRY id=2")
        assert pipe.arrived(timeout=5) == b"INFO job SUCCESS id=1\nWARNING job RETRY id=2\n"
    finally:
        handler.close()


def test_closing_writes_what_is_left(pipe: _Pipe) -> None:
    """logging.shutdown at exit closes every handler: no line is left in the buffer."""
    handler = BatchedStreamHandler(pipe.write_end, interval=60)
    _logger(handler).info("job SUCCESS id=1")
    handler.close()
    assert pipe.arrived(timeout=5) == b"INFO job SUCCESS id=1\n"


def test_a_forked_child_does_not_write_its_parents_lines_again(pipe: _Pipe) -> None:
    """The prefork pool forks with lines in the buffer: they are written once, by the
    parent, before the fork; the child writes only its own."""
    handler = BatchedStreamHandler(pipe.write_end, interval=60)
    try:
        log = _logger(handler)
        log.info("parent before the fork")
        child = os.fork()
        if child == 0:  # the child: its own line, written as it ends (the pool's exit hook)
            try:
                log.info("child")
                handler.flush()
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        log.info("parent after the fork")
        handler.flush()
        lines = pipe.arrived(timeout=5).decode().splitlines()
        assert sorted(lines) == [
            "INFO child",
            "INFO parent after the fork",
            "INFO parent before the fork",
        ]
        assert lines[0] == "INFO parent before the fork"
    finally:
        handler.close()
