"""The Redis broker's heartbeat thread (brokers/redis_threads.py) beats on its own until
stopped, through any error a beat raises."""

from __future__ import annotations

import threading

import redis

from brokers.redis_threads import Heartbeat
from tests.support.celery_worker import wait_for


def test_a_failing_beat_does_not_stop_the_heartbeat() -> None:
    """Redis away, then an unexpected error, then Redis back: the beats go on, and the
    thread ends once the heartbeat is stopped."""
    beats: list[int] = []
    errors = iter([redis.ConnectionError("away"), RuntimeError("anything else")])
    lock = threading.Lock()

    def beat() -> None:
        with lock:
            beats.append(len(beats))
        error = next(errors, None)
        if error is not None:
            raise error

    heartbeat = Heartbeat(beat, 0.01, "test-heartbeat", unreachable=(redis.ConnectionError,))
    heartbeat.start()
    wait_for(lambda: len(beats) >= 5, timeout=10, what="beats after two failures")
    heartbeat.stop()
    assert not heartbeat.alive  # its thread has ended: no beat can follow
