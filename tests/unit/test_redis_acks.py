"""The Redis broker's ack flusher (brokers/redis_threads.py) keeps every ack through any
error: a refused batch is kept, retried after a backoff, and sent in chunks."""

from __future__ import annotations

import threading

import pytest
import redis

from brokers.redis_threads import AckBuffer
from tests.support.celery_worker import wait_for

# Each error a Redis can answer an ACK script with, or a client can raise on the way.
ERRORS = [
    redis.ConnectionError("Connection closed by server."),
    redis.TimeoutError("Timeout reading from socket"),
    redis.ReadOnlyError("You can't write against a read only replica."),
    redis.ResponseError(
        "MISCONF Redis is configured to save RDB snapshots, but it's "
        "currently unable to persist to disk."
    ),
    redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run 'evalsha'"),
    redis.ResponseError("Error running script: too many results to unpack"),
    RuntimeError("anything else"),
]


class FlakyRedis:
    """Refuses the first `failures` sends with `error`, then records every field."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.sent: list[str] = []
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def send(self, fields: list[str]) -> None:
        with self.lock:
            self.calls.append(len(fields))
            if self.failures:
                self.failures -= 1
                raise self.error
            self.sent.extend(fields)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AckBuffer, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(AckBuffer, "MAX_RETRY_SECONDS", 0.04)


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_a_refused_batch_is_kept_and_sent_again(error: Exception) -> None:
    """Three refusals of any kind: the flusher thread lives on, and every ack (those of
    the refused batch and those added meanwhile) reaches Redis, once each."""
    flaky = FlakyRedis(error, failures=3)
    acks = AckBuffer(flaky.send, chunk=1000)
    for number in range(5):
        acks.add(f"tag-{number}")
    wait_for(lambda: len(flaky.calls) >= 3, timeout=10, what="three refused sends")
    acks.add("tag-late")
    wait_for(lambda: acks.pending == 0 and len(flaky.sent) == 6, timeout=10,
             what="every ack sent")  # fmt: skip
    assert sorted(flaky.sent) == sorted([f"tag-{n}" for n in range(5)] + ["tag-late"])
    acks.close()


def test_a_large_batch_goes_in_chunks() -> None:
    """2,500 acks and a chunk of 1,000: no call names more than 1,000 fields."""
    flaky = FlakyRedis(RuntimeError(), failures=0)
    acks = AckBuffer(flaky.send, chunk=1000)
    with acks._sending:  # hold the flusher while the batch gathers
        for number in range(2500):
            acks.add(f"tag-{number}")
    wait_for(lambda: len(flaky.sent) == 2500, timeout=10, what="every ack sent")
    assert max(flaky.calls) <= 1000
    acks.close()


def test_close_keeps_what_it_could_not_send() -> None:
    """Closing with Redis refusing: False, and the acks stay pending, not dropped."""
    flaky = FlakyRedis(redis.ConnectionError(), failures=100)
    acks = AckBuffer(flaky.send, chunk=1000)
    with acks._sending:
        acks.add("tag-1")
    assert acks.close() is False
    assert acks.pending == 1
