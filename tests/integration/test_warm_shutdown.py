"""SIGTERM: the running job finishes; the jobs prefetched behind it go back at once."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis

from brokers import ALL_QUEUES, open_broker
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for

FETCH = "tasks.pokemon.fetch_pokemon"
NAMES = ["bulbasaur", "ivysaur", "venusaur", "charmander"]
HANG_SECONDS = 12.0


@pytest.mark.broker("redis")
def test_warm_shutdown_hands_back_the_jobs_it_had_not_started(
    redis_url: str, sandbox: Any, broker_kind: str, new_broker: Callable[[int], str]
) -> None:
    """One thread, four jobs in hand, the first hanging 12 s: SIGTERM returns the three
    others to the queue while the first still runs; the first is stored, and the next
    worker stores the rest."""
    env = worker_environment(
        redis_url,
        sandbox,
        CELERY_BROKER_URL=new_broker(3),
        CELERY_RESULT_BACKEND=with_db(redis_url, 4),
        WORKER_PREFETCH_MULTIPLIER="4",  # one thread holds four jobs
        HTTP_READ_TIMEOUT="20",  # the hang outlasts the shutdown's first seconds
    )
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    results = redis.Redis.from_url(redis_url, decode_responses=True)
    # Long enough that the test's own steps up to the SIGTERM fit inside it on a loaded
    # machine (5 s did not: the job had ended before the signal was sent).
    sandbox.inject("pokemon", "latency", seconds=HANG_SECONDS, times=1)

    # The reliable fetch takes no more jobs while every thread is busy (its floor is the
    # free threads): the four wait queued for the worker's first fetch, which takes all.
    for name in NAMES:
        producer.send_task(FETCH, args=[name])
    first = WorkerProcess(env, concurrency=1).start(producer)
    second = None

    def ready() -> int:
        with contextlib.closing(open_broker(env["CELERY_BROKER_URL"])) as broker:
            return sum(depth.ready for depth in broker.depths(ALL_QUEUES))

    try:
        wait_for(lambda: sandbox.calls("pokemon") == 1, timeout=20, what="the first job running")
        wait_for(lambda: ready() == 0, timeout=10, what="all four jobs in the worker's hands")
        assert first.process is not None
        assert not results.exists(f"pokemon:{NAMES[0]}"), "the first job ended before SIGTERM"
        os.killpg(first.process.pid, signal.SIGTERM)
        # The event itself, not a deadline on it: the three are back while the first job
        # still runs. (The closing channel would return them too, but only after
        # the first job ended, and stored.)
        seen = wait_for(
            lambda: (ready(), results.exists(f"pokemon:{NAMES[0]}")) if ready() else None,
            timeout=HANG_SECONDS + 10, what="the three unstarted jobs back",
        )  # fmt: skip
        assert seen == (3, 0), "the unstarted jobs went back only as the first job ended"
        first.process.wait(timeout=HANG_SECONDS + 20)
        first.process = None
        assert results.exists(f"pokemon:{NAMES[0]}")
        assert sandbox.calls("pokemon") == 1  # nothing else ran on the stopping worker
        second = WorkerProcess(env, concurrency=1).start(producer)
        keys = [f"pokemon:{name}" for name in NAMES]
        wait_for(lambda: results.exists(*keys) == 4, timeout=30, what="every job stored")
        assert results.xlen("events:failures") == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
        results.close()
        producer.close()
