"""Messages no worker can finish: parked or recorded, never looped forever, never lost.

On RabbitMQ a job delivered BROKER_DELIVERY_LIMIT times without an acknowledgement
(each delivery ended by a dying worker) is dead-lettered to its queue's `.dead` queue,
and `apiworker dead-letters` lists and replays it; a body no worker can decode is
dead-lettered at once. On either broker such a message, and one for a task name nobody
registered, leaves a record in the failure stream.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from click.testing import CliRunner
from kombu import Connection, Producer

from brokers import ALL_QUEUES, open_broker
from ops.cli import cli
from tests.chaos.conftest import FETCH, Deployment
from tests.integration.conftest import reliable_transport  # noqa: F401  # a fixture used below
from tests.support.celery_worker import wait_for

DELIVERY_LIMIT = 2


def run_cli(deployment: Deployment, *args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={**deployment.env, **env})


def records_of(deployment: Deployment, task: str) -> list[dict[str, str]]:
    return [record for record in deployment.failures() if record["task"] == task]


def test_unknown_task_and_undecodable_message_are_recorded(deploy, sandbox: Any) -> None:
    """A job for a task nobody registered and a pickled job each leave a failure record
    saying why; the worker goes on serving."""
    deployment: Deployment = deploy()
    worker = deployment.start_worker(concurrency=2)
    producer = deployment.producer
    unknown = producer.send_task("tasks.pokemon.no_such_task", args=["x"], kwargs={"k": 1})
    pickled = producer.send_task(FETCH, args=["mew"], serializer="pickle")
    assert producer.send_task(FETCH, args=["ditto"]).get(timeout=30)["name"] == "ditto"

    found = wait_for(
        lambda: len(deployment.failures()) >= 2 and deployment.failures(),
        timeout=15,
        what="two failure records",
    )
    by_id = {record["task_id"]: record for record in found}  # type: ignore[union-attr]
    assert by_id[unknown.id]["task"] == "tasks.pokemon.no_such_task"
    assert by_id[unknown.id]["error"] == "UnreadableMessage"
    assert json.loads(by_id[unknown.id]["args"]) == ["x"]
    assert json.loads(by_id[unknown.id]["kwargs"]) == {"k": 1}
    assert by_id[pickled.id]["task"] == FETCH
    assert by_id[pickled.id]["error"] == "UnreadableMessage"
    assert "pickle" in by_id[pickled.id]["message"]
    assert not deployment.results.exists("pokemon:mew")
    assert worker.alive


@pytest.mark.broker("amqp")
def test_unreadable_messages_are_parked_and_listed(deploy, sandbox: Any) -> None:
    """On RabbitMQ both kinds of unreadable message end in `celery.dead`, listed with
    their task and reason; nothing is left in the queue."""
    deployment: Deployment = deploy()
    deployment.start_worker(concurrency=2)
    producer = deployment.producer
    producer.send_task("tasks.pokemon.no_such_task", args=["x"])
    publish_raw(deployment, b"\x00\x01 not a job", content_type="application/x-garbage")
    assert producer.send_task(FETCH, args=["ditto"]).get(timeout=30)["name"] == "ditto"

    def parked() -> list[dict[str, Any]]:
        return parked_entries(deployment)

    found = wait_for(lambda: len(parked()) == 2 and parked(), timeout=15, what="two parked")
    assert {entry["queue"] for entry in found} == {"celery"}  # type: ignore[union-attr]
    assert {entry["reason"] for entry in found} == {"rejected"}  # type: ignore[union-attr]
    assert "tasks.pokemon.no_such_task" in {entry["task"] for entry in found}  # type: ignore[union-attr]
    assert len(parked()) == 2  # listing leaves them where they are
    # ...and costs no delivery: a message returned unacknowledged counts one on RabbitMQ.
    deliveries = sorted((entry["task_id"], entry["deliveries"]) for entry in parked())
    for _ in range(3):
        assert sorted((entry["task_id"], entry["deliveries"]) for entry in parked()) == deliveries
    wait_for(lambda: jobs_drained(deployment), timeout=10, what="the queues drained")


@pytest.mark.usefixtures("reliable_transport")
def test_a_job_that_keeps_killing_its_workers_is_parked_then_replayed(
    deploy, sandbox: Any, broker_kind: str
) -> None:
    """Each delivery dies with its worker: after the delivery limit the job is parked,
    not delivered again; `dead-letters replay` sends it back and it is stored. (On Redis
    the next worker's heartbeat finds each dead holder; the park leaves a record.)

    The producer here runs on the worker's reliable transport, as it does whenever
    anything in the process has imported `worker.app`: its channel reads the replies to
    `start_worker`'s ping, and must not judge the workers by its own delivery limit (the
    default, 5, let the job past their limit of 2 for a fourth delivery)."""
    deployment: Deployment = deploy(
        BROKER_DELIVERY_LIMIT=str(DELIVERY_LIMIT),  # fewer worker deaths to reach it
        SINGLE_FLIGHT_LOCK_SECONDS="0.5",  # the dead holder's lease is gone by the next try
        # The hang outlasts the kill however slow the machine: one call per delivery, no
        # client retry or timeout in between, so the upstream's count is the deliveries'.
        HTTP_READ_TIMEOUT="30",
    )
    if broker_kind == "amqp":  # RabbitMQ's limit is the queue's policy: set it as an operator
        applied = run_cli(
            deployment,
            "rabbitmq",
            "apply-policy",
            RABBITMQ_MANAGEMENT_URL=deployment.rabbit.management_url,  # type: ignore[union-attr]
        )
        assert applied.exit_code == 0, applied.output
        assert "delivery-limit 2" in applied.stdout
    sandbox.inject("pokemon", "latency", seconds=60, times=None)  # every call hangs
    worker = deployment.start_worker(concurrency=1)  # it declares the queues
    job = deployment.producer.send_task(FETCH, args=["mew"])
    deliveries = 0
    while True:

        def delivered(before: int = deliveries) -> bool:
            return sandbox.calls("pokemon") > before or bool(parked_count(deployment))

        wait_for(delivered, timeout=30, what="the job delivered or parked")
        if parked_count(deployment):
            worker.stop()
            break
        deliveries += 1
        worker.kill()  # dies mid-call, as an out-of-memory kill would
        assert deliveries <= DELIVERY_LIMIT + 1, "delivered past its limit"
        worker = deployment.start_worker(concurrency=1)
    assert deliveries == DELIVERY_LIMIT + 1  # the first delivery and DELIVERY_LIMIT more

    # The server's counts (what ended the loop) may run ahead of what a listing can take.
    (entry,) = wait_for(lambda: parked_entries(deployment), timeout=10, what="the parked job")  # type: ignore[misc]
    assert entry["task_id"] == job.id
    assert entry["queue"] == "celery"  # where a producer without routes sends it
    assert entry["args"] == ["mew"]
    assert entry["reason"] == "delivery_limit"

    sandbox.clear_faults()
    deployment.start_worker(concurrency=1)
    replayed = run_cli(deployment, "dead-letters", "replay", "--all")
    assert replayed.exit_code == 0, replayed.output
    assert job.id in replayed.stdout
    wait_for(lambda: deployment.results.exists("pokemon:mew"), timeout=30, what="mew stored")
    relisted = run_cli(deployment, "dead-letters", "list", "--json")
    assert relisted.exit_code == 0
    assert relisted.stdout == ""  # nothing parked any more
    if broker_kind == "redis":
        (record,) = deployment.failures()
        assert (record["task_id"], record["error"]) == (job.id, "DeliveryLimitReached")
        assert json.loads(record["args"]) == ["mew"]
    else:
        assert deployment.failures() == []


def jobs_drained(deployment: Deployment) -> bool:
    """No job waiting or taken in any queue but the `.dead` ones, which keep the parked."""
    assert deployment.rabbit is not None
    counts = deployment.rabbit.queue_counts(deployment.env["CELERY_BROKER_URL"])
    return not any(sum(pair) for name, pair in counts.items() if not name.endswith(".dead"))


def parked_entries(deployment: Deployment) -> list[dict[str, Any]]:
    """`apiworker dead-letters list --json`, one entry per parked job."""
    listed = run_cli(deployment, "dead-letters", "list", "--json")
    assert listed.exit_code == 0, listed.output
    return [json.loads(line) for line in listed.stdout.splitlines()]


def parked_count(deployment: Deployment) -> int:
    """Parked messages as the broker counts them (RabbitMQ's figures lag by a moment)."""
    with contextlib.closing(open_broker(deployment.env["CELERY_BROKER_URL"])) as broker:
        return sum(depth.dead or 0 for depth in broker.depths(ALL_QUEUES))


def publish_raw(deployment: Deployment, body: bytes, *, content_type: str) -> None:
    """A message no Celery worker can decode, sent to the default queue through AMQP's
    default exchange (as celery-node sends)."""
    with Connection(deployment.env["CELERY_BROKER_URL"]) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange="",
            routing_key="celery",
            content_type=content_type,
            content_encoding="binary",
            headers={"id": "raw-1"},
        )
