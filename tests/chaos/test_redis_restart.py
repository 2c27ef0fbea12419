"""Redis restarted or killed while jobs flow: the worker reconnects and no job is lost.

The server runs with the compose file's own Redis options (append-only file, the
default `appendfsync everysec`), read from docker-compose.yml, so the test crashes the
Redis that production runs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from brokers import ALL_QUEUES, open_broker
from ops.processes.worker import WorkerProcess
from tests.chaos.conftest import FETCH, Deployment, pokemon_names, scaled
from tests.support.celery_worker import wait_for
from tests.support.redis_server import RedisServer

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
# Every job stored or recorded, and nothing left in a queue or in hand, within this long
# of Redis answering again.
RECOVERY_SECONDS = 30.0


def compose_redis_options() -> tuple[str, ...]:
    """The options after `redis-server` in the compose file's redis service."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    return tuple(command[1:])


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A private Redis of this test alone, configured as in docker-compose.yml."""
    options = compose_redis_options()
    assert "--appendonly" in options
    assert "--appendfsync" not in options  # so Redis's default, everysec
    server = RedisServer(args=options).start()
    try:
        yield server
    finally:
        server.cleanup()


class Supervisor:
    """Replaces a worker that exits, as the deployment's restart policy does; counts it."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.worker: WorkerProcess = deployment.start_worker(concurrency=4)
        self.restarts = 0

    def check(self) -> None:
        for _ in range(5):
            if self.worker.alive:
                return
            self.restarts += 1
            try:
                self.worker = self.deployment.start_worker(concurrency=4)
            except RuntimeError:
                continue  # it died while starting (on the next poisoned item): again
        assert self.worker.alive, "five replacement workers died in a row"


# Redis as the broker and as the store at once: the case where its outage costs most.
@pytest.mark.broker("redis")
@pytest.mark.parametrize("how", ["restart", "crash"])
def test_every_job_sent_around_a_redis_restart_or_crash_is_stored_or_recorded(
    deploy, durable_redis: RedisServer, sandbox: Any, how: str, broker_kind: str
) -> None:
    """SIGTERM or SIGKILL mid-flow: every job stored (or recorded to replay) within 30 s
    of Redis answering again, none lost, and the worker keeps serving without a restart."""
    deployment = deploy(
        redis_url=durable_redis.url,
    )
    supervisor = Supervisor(deployment)
    sandbox.latency = 0.05
    names = pokemon_names(scaled(60))
    before, after = names[::2], names[1::2]
    for name in before:
        deployment.producer.send_task(FETCH, args=[name])
    wait_for(lambda: deployment.results.keys("pokemon:*"), timeout=20, what="jobs flowing")

    if how == "restart":
        durable_redis.restart()
    else:
        durable_redis.crash_and_start()
    answering_at = time.monotonic()  # start() returns once Redis answers
    for name in after:
        deployment.producer.send_task(FETCH, args=[name])

    def accounted() -> tuple[set[str], set[str], set[str]]:
        stored = {key.removeprefix("pokemon:") for key in deployment.results.keys("pokemon:*")}
        recorded = {json.loads(fields["args"])[0] for fields in deployment.failures()}
        return stored, recorded, set(names) - stored - recorded

    def settled() -> bool:
        supervisor.check()
        _, _, missing = accounted()
        return not missing and deployment.drained()

    with contextlib.suppress(TimeoutError):  # the assertions below say what is missing
        wait_for(settled, timeout=RECOVERY_SECONDS, interval=0.2, what="every job accounted")
    recovered = time.monotonic() - answering_at
    stored, recorded, lost = accounted()
    assert (lost, deployment.drained()) == (set(), True), (
        f"lost={sorted(lost)} queues={queue_state(deployment)} restarts={supervisor.restarts}"
    )
    # A job caught mid-flight may end as a record (to replay): the Redis error it met
    # outlived its retry, whose publication needed Redis too.
    for record in deployment.failures():
        assert record["error"] in ("ConnectionError", "TimeoutError")
        assert json.loads(record["args"])[0] in before
    # And the worker rode it out: it used to exit in about one restart in ten (kombu
    # closing a detached channel, brokers/redis_transport.py).
    assert (supervisor.restarts, supervisor.worker.alive) == (0, True)
    print(
        f"redis {how}: sent={len(names)} stored={len(stored & set(names))} "
        f"recorded={len(recorded)} lost={len(lost)} worker_restarts={supervisor.restarts} "
        f"settled-in={recovered:.1f}s"
    )


def queue_state(deployment: Deployment) -> dict[str, object]:
    """Queue lengths and unacknowledged count, to say where a missing job is."""
    with contextlib.closing(open_broker(deployment.env["CELERY_BROKER_URL"])) as broker:
        return {
            f"{depth.name} ready/in hand": (depth.ready, depth.unacked)
            for depth in broker.depths(ALL_QUEUES)
        }
