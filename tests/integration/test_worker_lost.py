"""A worker killed mid-job loses nothing: the job runs again on the next worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for


def test_a_job_in_flight_survives_sigkill_of_its_worker(
    redis_url: str, sandbox: Any, broker_kind: str, new_broker: Callable[[int], str]
) -> None:
    """SIGKILL during the upstream call; a new worker completes the job with one more
    upstream call and no failure record."""
    env = worker_environment(
        redis_url,
        sandbox,
        CELERY_BROKER_URL=new_broker(3),
        CELERY_RESULT_BACKEND=with_db(redis_url, 4),
    )
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    results = redis.Redis.from_url(redis_url, decode_responses=True)
    first = WorkerProcess(env).start(producer)
    second = None
    try:
        # Long enough to kill the worker mid-call, short of every timeout above.
        sandbox.inject("pokemon", "latency", seconds=1.0, times=1)
        job = producer.send_task("tasks.pokemon.fetch_pokemon", args=["charizard"])
        wait_for(lambda: sandbox.calls("pokemon") == 1, timeout=20, what="the job in flight")
        first.kill()
        assert results.get("pokemon:charizard") is None
        second = WorkerProcess(env).start(producer)
        assert job.get(timeout=30)["name"] == "charizard"
        assert json.loads(results.get("pokemon:charizard"))["id"] == 6
        assert sandbox.calls("pokemon") == 2
        assert results.xlen("events:failures") == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
        results.close()
        producer.close()
