"""Chaos fixtures: real worker processes against a private Redis and the sandbox.

Each deployment gets Redis databases of its own (results, broker, result backend), so
the session's integration worker never takes its jobs and every test starts empty.
Counts scale with CHAOS_SCALE (default 1, the suite's size); docs/reliability.md gives
the figures of a full-scale run and the command behind each.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import kombu.exceptions
import pytest
import redis
from celery import Celery

from brokers import ALL_QUEUES, open_broker
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from sandbox.pokeapi import load_catalogue
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for
from tests.support.rabbitmq import RabbitServer

SCALE = float(os.environ.get("CHAOS_SCALE", "1"))
FETCH = "tasks.pokemon.fetch_pokemon"
FAILURES = "events:failures"
# Databases of the suite's private Redis used by chaos deployments (0-4 are taken).
RESULTS_DB, BROKER_DB, BACKEND_DB = 8, 9, 10


def scaled(count: int) -> int:
    """`count` times CHAOS_SCALE, at least 1."""
    return max(1, round(count * SCALE))


def pokemon_names(count: int) -> list[str]:
    """Distinct names the sandbox knows, cycling when more are asked for than exist."""
    names = load_catalogue().names
    return [names[index % len(names)] for index in range(count)]


class Deployment:
    """A worker environment on its own databases (and, on RabbitMQ, its own vhost), its
    producer, and its workers."""

    def __init__(
        self,
        redis_url: str,
        sandbox: Any,
        overrides: dict[str, str],
        *,
        broker_url: str,
        rabbit: RabbitServer | None = None,
    ) -> None:
        self.env = worker_environment(
            redis_url,
            sandbox,
            REDIS_URL=with_db(redis_url, RESULTS_DB),
            CELERY_BROKER_URL=broker_url,
            CELERY_RESULT_BACKEND=with_db(redis_url, BACKEND_DB),
            **overrides,
        )
        self.rabbit = rabbit
        self.results = redis.Redis.from_url(self.env["REDIS_URL"], decode_responses=True)
        self.backend = redis.Redis.from_url(self.env["CELERY_RESULT_BACKEND"])
        #: The Redis broker's own client (its lists and in-hand hashes); None on RabbitMQ.
        self.broker = None if rabbit else redis.Redis.from_url(broker_url)
        for client in (self.results, self.broker, self.backend):
            if client is not None:
                client.flushdb()
        self.producer: Celery = producer_app(
            self.env["CELERY_BROKER_URL"], self.env["CELERY_RESULT_BACKEND"]
        )
        self.workers: list[WorkerProcess] = []

    def start_worker(self, concurrency: int = 8, **env: str) -> WorkerProcess:
        worker = WorkerProcess({**self.env, **env}, concurrency=concurrency)
        self.workers.append(worker)
        try:
            return worker.start(self.producer)
        except (OSError, redis.RedisError, kombu.exceptions.KombuError):
            # The producer's control connection went stale (Redis restarted): ask again.
            wait_for(lambda: self._pings(worker), timeout=30, what=f"worker {worker.name}")
            return worker

    def _pings(self, worker: WorkerProcess) -> bool:
        try:
            return bool(self.producer.control.ping(destination=[worker.name], timeout=0.5))
        except (OSError, redis.RedisError, kombu.exceptions.KombuError):
            return False

    def drained(self) -> bool:
        """No job waiting in a queue and none taken but unacknowledged (running or due)."""
        if self.rabbit is not None:
            counts = self.rabbit.queue_counts(self.env["CELERY_BROKER_URL"])
            return not any(ready or unacked for ready, unacked in counts.values())
        with contextlib.closing(open_broker(self.env["CELERY_BROKER_URL"])) as broker:
            return not any(depth.ready or depth.unacked for depth in broker.depths(ALL_QUEUES))

    def failures(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.results.xrange(FAILURES)]

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):  # it exited on its own (counted)
                worker.stop()
        self.producer.close()
        for client in (self.results, self.broker, self.backend):
            if client is not None:
                client.close()


@pytest.fixture
def deploy(
    redis_server_url: str,
    sandbox: Any,
    broker_kind: str,
    new_broker: Callable[[int], str],
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Deployment]]:
    """Make deployments (on the suite's Redis, or on `redis_url=`), each on this test's
    broker; all stopped after."""
    made: list[Deployment] = []

    def make(redis_url: str | None = None, **overrides: str) -> Deployment:
        base = redis_url or redis_server_url
        if broker_kind == "amqp":
            broker_url = new_broker(BROKER_DB)
            rabbit = request.getfixturevalue("rabbit_server")
        else:
            broker_url, rabbit = with_db(base, BROKER_DB), None
        deployment = Deployment(base, sandbox, overrides, broker_url=broker_url, rabbit=rabbit)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()
