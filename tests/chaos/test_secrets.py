"""A real-looking API token appears nowhere: not in logs, results, failures or the backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.chaos.conftest import Deployment
from tests.support.celery_worker import wait_for

TOKEN = "smp_live_Xk29Qv7RtA3mLw8ZpN4cJ6yHbD1fGsEu"  # a fake, real-looking token
SYNC_ALL = "tasks.semaphore.sync_all_projects"
SYNC_PIPELINES = "tasks.semaphore.sync_pipelines"


@pytest.mark.broker("redis")  # reads every key of the Redis broker
def test_the_token_never_leaves_the_request_header(deploy, sandbox: Any) -> None:
    """401s, 5xx, a redirect echoing the token, DEBUG logs: the token is nowhere."""
    accepted = sandbox.semaphore_token
    sandbox.semaphore_token = TOKEN
    try:
        deployment = deploy(SEMAPHORE_API_TOKEN=TOKEN, LOG_LEVEL="DEBUG")
        worker = deployment.start_worker(concurrency=4, TEST_WORKER_LOGLEVEL="DEBUG")
        run_jobs(deployment, sandbox)
    finally:
        sandbox.semaphore_token = accepted
    wait_for(deployment.drained, timeout=20, what="every job finished")

    redirect = [r for r in deployment.failures() if r["error"] == "UnexpectedRedirect"]
    assert "***@evil.example" in redirect[0]["message"]  # the echo was there, masked
    places = {"worker log": worker.log()}
    for name, client in (
        ("results", deployment.results),
        ("broker", deployment.broker),
        ("result backend", deployment.backend),
    ):
        for key, value in dump(client):
            places[f"{name} {key!r}"] = value
    assert len(places) > 10
    print(
        f"secrets: records={len(deployment.failures())} places searched={len(places)} "
        f"log bytes={len(places['worker log'])}"
    )
    leaks = [place for place, text in places.items() if TOKEN in text]
    assert leaks == []


def run_jobs(deployment: Deployment, sandbox: Any) -> None:
    producer = deployment.producer
    assert producer.send_task(SYNC_ALL).get(timeout=30) == {"projects": 3}
    project = json.loads(deployment.results.get("semaphore-projects:all"))[0]["id"]
    failing = [
        ("projects", "unauthorized", {}, SYNC_ALL, ()),
        ("pipelines", "status", {"status": 500}, SYNC_PIPELINES, (project,)),
        ("pipelines", "status", {"status": 503, "times": 3}, SYNC_PIPELINES, (project,)),
        (
            "projects",
            "redirect",
            {"location": f"https://{TOKEN}@evil.example/steal?token={TOKEN}"},
            SYNC_ALL,
            (),
        ),
    ]
    for route, kind, params, task, args in failing:
        sandbox.inject(route, kind, **params)
        producer.send_task(task, args=list(args)).get(timeout=30, propagate=False)
        sandbox.clear_faults()
    sandbox.semaphore_token = "a-token-we-were-not-given"  # every call now answers 401
    producer.send_task(SYNC_ALL).get(timeout=30, propagate=False)
    # The record is written after the result is stored: wait for it, do not race it.
    wait_for(lambda: len(deployment.failures()) >= 4, timeout=10, what="four failure records")


def dump(client: redis.Redis) -> Iterator[tuple[bytes, str]]:
    """Every key of one database with its whole value as text, whatever its type."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        yield key, repr(value) + repr(key)
