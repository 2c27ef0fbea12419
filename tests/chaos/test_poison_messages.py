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
# The line the worker logs for each item: refused as a malformed item (brokers/redis_transport.py,
# then worker/consumer.py records it), or, for a well-formed envelope that names no task,
# dropped by Celery as unknown (and recorded too).
REFUSED = (
    "unreadable message rejected (content type 'application/x-malformed-queue-item'): "
    "ContentDisallowed: Refusing to deserialize untrusted content"
)
UNKNOWN = "Received and deleted unknown message"
LOGGED_AS = {
    "not JSON": REFUSED,
    "a JSON list": REFUSED,
    "a JSON object that is no envelope": REFUSED,
    "an envelope without headers": UNKNOWN,
    "an envelope whose body is not base64": REFUSED,
}
# With kombu's own transport, Celery 5.7 / kombu 5.7 stop the whole worker on the first
# two, and the base64 one is put back on the queue as the worker dies, so it stops every
# worker that takes it. With it, none may cost a worker restart.
KILLS_THE_WORKER_TODAY: set[str] = set()


def serve_one(deployment: Deployment, supervisor: Supervisor, name: str) -> None:
    job = deployment.producer.send_task(FETCH, args=[name])
    wait_for(lambda: supervisor.check() or job.ready(), timeout=30, what=f"the {name} job")
    assert job.get(timeout=1)["name"] == name


@pytest.mark.broker("redis")  # raw items in kombu's Redis lists; AMQP: test_dead_letters
def test_each_malformed_queue_item_is_logged_once_dropped_and_the_next_job_served(
    deploy, sandbox: Any
) -> None:
    """Raw items pushed into the queue: consumed once, logged and recorded, and the next
    job is served."""
    deployment = deploy()
    supervisor = Supervisor(deployment)
    crashed: list[str] = []
    for what, item in RAW_ITEMS.items():
        restarts = supervisor.restarts
        logged = worker_logs(deployment).count(LOGGED_AS[what])
        deployment.broker.lpush(QUEUE, item)
        serve_one(deployment, supervisor, "pikachu")
        deployment.results.delete("pokemon:pikachu", "meta:{pokemon:pikachu}")
        if supervisor.restarts > restarts:
            crashed.append(what)
        # Served after the item, so the item was taken first: its line is in the log.
        assert worker_logs(deployment).count(LOGGED_AS[what]) == logged + 1, what
    assert set(crashed) <= KILLS_THE_WORKER_TODAY
    log = worker_logs(deployment)
    assert [log.count(line) for line in (REFUSED, UNKNOWN)] == [4, 1]
    records = wait_for(lambda: recorded(deployment, len(RAW_ITEMS)), timeout=10)
    assert {record["error"] for record in records} == {"UnreadableMessage"}  # type: ignore[union-attr]
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

    # By id, not by count: on RabbitMQ the unknown task leaves a record too, and which
    # of them lands first is the workers' race.
    records = wait_for(
        lambda: records_of(deployment, no_args.id, huge.id), timeout=10, what="both records"
    )
    assert isinstance(records, dict)
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


def worker_logs(deployment: Deployment) -> str:
    return "".join(worker.log() for worker in deployment.workers)


def recorded(deployment: Deployment, count: int) -> list[dict[str, str]] | None:
    failures = deployment.failures()
    return failures if len(failures) >= count else None


def records_of(deployment: Deployment, *task_ids: str) -> dict[str, dict[str, str]] | None:
    """The failure records by task id, once there is one for each of `task_ids`."""
    records = {record.get("task_id", ""): record for record in deployment.failures()}
    return records if set(task_ids) <= records.keys() else None


UNREGISTERED = "job FAILURE task=tasks.pokemon.no_such_task id="
PICKLE_REFUSED = (
    "Received invalid task message: Refusing to deserialize untrusted content of type pickle"
)


def refusals_logged(log: str) -> str | None:
    """The log once both refusals are in it, each exactly once."""
    counts = (log.count(UNREGISTERED), log.count(PICKLE_REFUSED))
    assert counts in ((0, 0), (0, 1), (1, 0), (1, 1)), counts
    return log if counts == (1, 1) else None
