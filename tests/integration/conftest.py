"""Integration fixtures: a real worker subprocess on the private Redis and the sandbox.

Redis databases split the roles so a test can empty the results without pulling the
broker's queue bindings from under a running worker: db 0 holds the results contract
(REDIS_URL), db 1 the broker, db 2 the result backend. Every test that starts a worker
runs twice, once per broker: Redis (db 1) and RabbitMQ (a vhost of this run's own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import transport as kombu_transport

from brokers import redis_transport
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.support.redis_cluster import PrivateCluster, private_cluster
from tests.support.redis_server import RedisServer, free_port


def with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


TEST_TOKEN = "integration-token-7f3a9c"


# Every setting a test worker runs with that differs from production, and why. Anything
# not named here (or by the test itself, with its own reason) is the documented default:
# workers do not inherit the shell's settings (tests/support/celery_worker.py).
# docs/reliability.md lists these per scenario.
SUITE_OVERRIDES: dict[str, tuple[str, str]] = {
    "HTTP_CONNECT_TIMEOUT": ("1", "a refused or black-holed connection ends in 1 s, not 3"),
    "HTTP_READ_TIMEOUT": ("2", "a hung upstream ends in 2 s, not 10; the attempts are the same"),
    "HTTP_RETRY_BACKOFF_INITIAL": ("0.01", "retries wait milliseconds; their count is default"),
    "HTTP_RETRY_BACKOFF_MAX": ("0.05", "the longest client backoff, shortened with the first"),
    "TASK_RETRY_BACKOFF": ("0.05", "task retries run at once; their count is the default"),
    "TASK_RETRY_BACKOFF_MAX": ("0.2", "the longest task countdown, shortened with the first"),
    "POKEMON_CATALOG": ("charizard,pikachu,mew", "a catalogue refresh asserts three jobs"),
    "METRICS_PORT": ("0", "several workers share the host; a test that reads metrics names a port"),
}


def worker_environment(redis_url: str, sandbox: Any, **overrides: str) -> dict[str, str]:
    """A worker's settings: where its Redis and upstreams are, SUITE_OVERRIDES, `overrides`.

    The addresses are wiring, not behaviour; every other value is production's default
    unless SUITE_OVERRIDES or the calling test names it.
    """
    env = {
        "REDIS_URL": with_db(redis_url, 0),
        "CELERY_BROKER_URL": with_db(redis_url, 1),
        "CELERY_RESULT_BACKEND": with_db(redis_url, 2),
        # Every upstream the sandbox serves, from their registry entries (`sandbox_path`).
        **sandbox.upstream_settings(),
    }
    env.update({name: value for name, (value, _reason) in SUITE_OVERRIDES.items()})
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A private Redis Cluster of the requesting module (tests/support/redis_cluster.py)."""
    with private_cluster() as private:
        yield private


@pytest.fixture
def cluster_worker_env(
    cluster: PrivateCluster, redis_server_url: str, sandbox_server: Any, session_broker_url: str
) -> dict[str, str]:
    """A worker's settings with its results on the module's cluster, its broker the
    session's (a single Redis, or RabbitMQ)."""
    return worker_environment(
        redis_server_url,
        sandbox_server,
        CELERY_BROKER_URL=session_broker_url,
        **cluster.environment(),
    )


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    """A redis-server of the requesting module alone: its counters (INFO commandstats)
    count only that module's tests."""
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def session_broker_url(broker_kind: str, redis_server_url: str, request: Any) -> str:
    """The session worker's broker: db 1 of the private Redis, or this run's vhost."""
    if broker_kind == "amqp":
        url: str = request.getfixturevalue("amqp_vhost")
        return url
    return with_db(redis_server_url, 1)


@pytest.fixture(scope="session")
def worker_env(
    redis_server_url: str, sandbox_server: Any, session_broker_url: str
) -> dict[str, str]:
    # Its own metrics port: the observability tests read this worker's /metrics.
    return worker_environment(
        redis_server_url,
        sandbox_server,
        CELERY_BROKER_URL=session_broker_url,
        METRICS_PORT=str(free_port()),
    )


@pytest.fixture(scope="session")
def producer(worker_env: dict[str, str]) -> Iterator[Celery]:
    app = producer_app(worker_env["CELERY_BROKER_URL"], worker_env["CELERY_RESULT_BACKEND"])
    yield app
    app.close()


@pytest.fixture(scope="session")
def celery_worker(worker_env: dict[str, str], producer: Celery) -> Iterator[WorkerProcess]:
    """One real worker for the session, consuming every queue."""
    worker = WorkerProcess(worker_env).start(producer)
    yield worker
    worker.stop()


@pytest.fixture
def results(redis_url: str, celery_worker: WorkerProcess, sandbox: Any) -> Iterator[redis.Redis]:
    """The results Redis (db 0), emptied, with a serving worker and a reset sandbox."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def reliable_transport() -> Iterator[None]:
    """kombu connections of this test take Redis messages with the worker's reliable
    fetch (`brokers.redis_transport.install`); kombu's own transport comes back after,
    so no later test in this process depends on which tests ran before it."""
    aliases = dict(kombu_transport.TRANSPORT_ALIASES)
    cached = dict(kombu_transport._transport_cache)
    redis_transport.install()
    yield
    kombu_transport.TRANSPORT_ALIASES.clear()
    kombu_transport.TRANSPORT_ALIASES.update(aliases)
    kombu_transport._transport_cache.clear()
    kombu_transport._transport_cache.update(cached)
