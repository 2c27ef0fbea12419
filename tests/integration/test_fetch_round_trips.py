"""Fewer broker round trips per job: one fetch takes a batch, acks leave in batches.

The broker is a redis-server of this module alone, so its INFO commandstats count only
what the worker asked of the broker (results and backend live elsewhere). kombu's
transport paid about three round trips a job (BRPOP, a pipeline recording the message,
another acknowledging it); the reliable fetch pays one script call per batch taken and
one per batch of acks.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import redis

from brokers.redis_transport import ReliableChannel
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from sandbox.pokeapi import load_catalogue
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for

JOBS = 300
HEARTBEAT_INTERVAL = ReliableChannel.heartbeat_interval


@pytest.mark.broker("redis")
def test_a_queued_backlog_costs_under_one_broker_round_trip_per_job(
    redis_url: str, sandbox: Any, own_redis: str, broker_kind: str, reliable_transport: None
) -> None:
    """300 jobs queued before the worker starts: every one stored, with fewer script
    calls on the broker than jobs (takes, acks and heartbeats together), and no BRPOP."""
    env = worker_environment(
        redis_url, sandbox,
        CELERY_BROKER_URL=own_redis, CELERY_RESULT_BACKEND=with_db(redis_url, 4),
    )  # fmt: skip
    broker = redis.Redis.from_url(own_redis)
    broker.flushdb()
    # This process's control replies (the ping that says the worker is up) go through the
    # worker's transport too (`reliable_transport`): no BRPOP from here either.
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    results = redis.Redis.from_url(redis_url)
    names = load_catalogue().names[:JOBS]
    for name in names:
        producer.send_task("tasks.pokemon.fetch_pokemon", args=[name], queue="pokeapi")
    broker.config_resetstat()
    started = time.monotonic()
    worker = WorkerProcess(env, concurrency=8).start(producer)
    try:
        keys = [f"pokemon:{name}" for name in names]
        wait_for(lambda: results.exists(*keys) == JOBS, timeout=60, what="every job stored")
        stats = broker.info("commandstats")
        # The heartbeat is one script call a second, however long a loaded machine
        # takes over the jobs: not counted against them.
        heartbeats = math.ceil((time.monotonic() - started) / HEARTBEAT_INTERVAL) + 1
    finally:
        worker.stop()
        broker.close()
        results.close()
        producer.close()
    evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    assert 0 < evalsha - heartbeats < JOBS, stats
    assert "cmdstat_brpop" not in stats
    print(f"broker script calls for {JOBS} jobs: {evalsha}")
