"""SIGKILL a worker with many jobs in flight and queued: none is lost, none runs twice
as far as the results can tell (each result key written, each value exact)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import redis

from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import WorkerProcess, producer_app, wait_for

SCALE = int(os.environ.get("CHAOS_SCALE", "1"))
INDEX = json.loads(
    (Path(__file__).parents[2] / "sandbox" / "data" / "pokemon-index.json").read_text()
)


def test_no_job_is_lost_when_a_worker_is_killed(redis_url: str, sandbox: Any) -> None:
    """Kill the worker mid-flow; a new worker finishes every job: lost = 0."""
    names = [entry["name"] for entry in INDEX["results"][: 120 * SCALE]]
    env = worker_environment(
        redis_url,
        sandbox,
        CELERY_BROKER_URL=with_db(redis_url, 6),
        CELERY_RESULT_BACKEND=with_db(redis_url, 7),
        BROKER_VISIBILITY_TIMEOUT="3",
        BROKER_RESTORE_INTERVAL="1",
        SINGLE_FLIGHT_LOCK_SECONDS="3",
        FRESHNESS_MAX_AGE="0",
    )
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    results = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = [f"pokemon:{name}" for name in names]

    def stored() -> int:
        # Only this test's keys: another test's worker may share the results database.
        return int(results.exists(*keys))

    sandbox.latency = 0.2  # keep many jobs in flight at the moment of the kill
    first = WorkerProcess(env, concurrency=8).start(producer)
    second = None
    try:
        for name in names:
            producer.send_task("tasks.pokemon.fetch_pokemon", args=[name])
        wait_for(
            lambda: stored() >= len(names) // 4,
            timeout=60,
            what="a quarter of the jobs stored",
        )
        first.kill()
        stored_at_kill = stored()
        assert stored_at_kill < len(names)  # jobs were still in flight or queued
        second = WorkerProcess(env, concurrency=8).start(producer)
        broker = redis.Redis.from_url(env["CELERY_BROKER_URL"], decode_responses=True)
        try:
            wait_for(
                lambda: stored() == len(names),
                timeout=60,
                what="every job stored",
            )
        except TimeoutError:
            missing = [n for n in names if results.get(f"pokemon:{n}") is None]
            raise AssertionError(
                f"missing={missing} queue={broker.llen('celery')} "
                f"unacked={broker.hlen('unacked')} index={broker.zcard('unacked_index')} "
                f"keys={broker.keys('*')}"
            ) from None
        lost = [name for name in names if results.get(f"pokemon:{name}") is None]
        assert lost == []
        for name in names:
            assert json.loads(results.get(f"pokemon:{name}"))["name"] == name
        assert results.xlen("events:failures") == 0
        print(
            f"worker killed: sent={len(names)} stored-before-kill={stored_at_kill} "
            f"completed={len(names)} lost={len(lost)} upstream-calls={sandbox.calls('pokemon')}"
        )
    finally:
        sandbox.latency = 0.0
        first.stop()
        if second is not None:
            second.stop()
        results.close()
        producer.close()
