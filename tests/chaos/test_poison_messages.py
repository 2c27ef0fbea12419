"""Hostile and malformed messages: refused or recorded, and the service keeps serving."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from tests.chaos.conftest import FETCH, Deployment
from tests.chaos.test_redis_restart import Supervisor
from tests.support.celery_worker import wait_for

QUEUE = "celery"  # where a producer without routes sends, so items and jobs share a list


def envelope(body: str, *, headers: dict[str, Any] | None) -> str:
    """A kombu Redis message as it sits in the queue list."""
    message: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE},
            "priority": 0,
        },
    }
    if headers is not None:
        message["headers"] = headers
    return json.dumps(message)


TASK_BODY = base64.b64encode(json.dumps([["pikachu"], {}, {}]).encode()).decode()
RAW_ITEMS = {
    "not JSON": "{not json",
    "a JSON list": "[1, 2, 3]",
    "a JSON object that is no envelope": '{"hello": "world"}',
    "an envelope without headers": envelope(TASK_BODY, headers=None),
    "an envelope whose body is not base64": envelope("%%% not base64 %%%", headers={}),
}
# Without worker/transport.py, Celery 5.7 / kombu 5.7 stop the whole worker on the first
# two, and the base64 one is put back on the queue as the worker dies, so it stops every
# worker that takes it. With it, none may cost a worker restart.
KILLS_THE_WORKER_TODAY: set[str] = set()


def serve_one(deployment: Deployment, supervisor: Supervisor, name: str) -> None:
    job = deployment.producer.send_task(FETCH, args=[name])
    wait_for(lambda: supervisor.check() or job.ready(), timeout=30, what=f"the {name} job")
    assert job.get(timeout=1)["name"] == name


@pytest.mark.broker("redis")  # raw items in kombu's Redis lists; AMQP: test_dead_letters
def test_malformed_queue_items_never_stop_the_service(deploy, sandbox: Any) -> None:
    """Raw items pushed into the queue: consumed once, logged, and the next job is served."""
    deployment = deploy()
    supervisor = Supervisor(deployment)
    crashed: list[str] = []
    for what, item in RAW_ITEMS.items():
        restarts = supervisor.restarts
        deployment.broker.lpush(QUEUE, item)
        serve_one(deployment, supervisor, "pikachu")
        deployment.results.delete("pokemon:pikachu", "meta:pokemon:pikachu")
        if supervisor.restarts > restarts:
            crashed.append(what)
    assert set(crashed) <= KILLS_THE_WORKER_TODAY
    assert deployment.drained()
    print(f"poison: raw items={len(RAW_ITEMS)} worker restarts={len(crashed)} ({crashed})")


def test_hostile_jobs_are_refused_or_recorded(deploy, sandbox: Any) -> None:
    """Unknown task, pickle, wrong arity, a 1 MB argument: logged or recorded, worker up."""
    deployment = deploy()
    worker = deployment.start_worker(concurrency=4)
    producer = deployment.producer
    producer.send_task("tasks.pokemon.no_such_task", args=["x"])
    producer.send_task(FETCH, args=["mew"], serializer="pickle")
    no_args = producer.send_task(FETCH, args=[])
    huge = producer.send_task(FETCH, args=["a" * 1024 * 1024])
    assert producer.send_task(FETCH, args=["ditto"]).get(timeout=30)["name"] == "ditto"

    records = {r["task_id"]: r for r in wait_for(lambda: recorded(deployment, 2), timeout=10)}
    assert records[no_args.id]["error"] == "TypeError"
    assert records[huge.id]["error"] == "InvalidInput"
    assert records[huge.id]["truncated"] == "1"
    assert len(records[huge.id]["args"]) < 2048  # the 1 MB argument is not stored whole
    log = wait_for(
        lambda: refusals_logged(worker.log()), timeout=10, what="the refusals in the log"
    )
    assert "pokemon:mew" not in deployment.results.keys("pokemon:*")
    assert sandbox.calls("pokemon") == 1
    assert worker.alive
    print(
        f"hostile jobs: sent=5 completed=1 recorded={len(records)} refused-and-logged=2 "
        f"lost=0 calls={sandbox.calls('pokemon')} "
        f"huge-argument record={len(records[huge.id]['args'])} bytes "
        f"(log {len(str(log).splitlines())} lines)"
    )


def recorded(deployment: Deployment, count: int) -> list[dict[str, str]] | None:
    failures = deployment.failures()
    return failures if len(failures) >= count else None


def refusals_logged(log: str) -> str | None:
    return log if "no_such_task" in log and "Refusing to deserialize" in log else None
