"""Suite-wide fixtures: a private Redis and RabbitMQ node, the sandbox upstream, and a clean
environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import pytest
import redis

from settings import reset_settings, setting_names
from tests.support.rabbitmq import RabbitNode, RabbitServer, RabbitUnavailable
from tests.support.redis_server import RedisServer

pytest_plugins = ["tests.support.sandbox_fixtures"]

SHARED_REDIS_PORT = 6379
BROKERS = ("redis", "amqp")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs a broker runs on each (or on those its `broker` mark names)."""
    if "broker_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("broker")
    kinds = list(marker.args) if marker else list(BROKERS)
    metafunc.parametrize("broker_kind", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """ "redis" or "amqp": the broker of the workers this test starts."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    """The RabbitMQ the suite makes its vhosts on: a private node of this pytest process
    (tests/support/rabbitmq.py), or the disposable server at TEST_AMQP_URL.

    Outside CI a machine without RabbitMQ skips the RabbitMQ half of the suite, saying so;
    under CI=true that is a failure, so CI never passes without it.
    """
    given = os.environ.get("TEST_AMQP_URL")
    node = None
    try:
        if given:
            server = RabbitServer.from_url(given)
        else:
            node = RabbitNode()
            server = RabbitServer.of_node(node)
    except RabbitUnavailable as exc:
        skip_without_rabbitmq(exc)
    if node is None:
        yield server
        return
    _private_nodes.append(node)
    try:
        node.start()
        yield server
    finally:
        _private_nodes.remove(node)
        node.cleanup()


def skip_without_rabbitmq(exc: RabbitUnavailable) -> NoReturn:
    """Skip a RabbitMQ test outside CI, saying why; under CI=true, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true needs RabbitMQ for the broker tests: {exc}")
    pytest.skip(f"RabbitMQ broker tests skipped: {exc}")


# The private RabbitMQ node of this process, once a test asked for it.
_private_nodes: list[RabbitNode] = []


@pytest.fixture(autouse=True)
def _rabbit_node_running() -> Iterator[None]:
    """A test that kills the private RabbitMQ node leaves the next one a running node:
    the same name, ports and data (so the session's vhosts are still there)."""
    yield
    for node in _private_nodes:
        if not node.alive:
            node.start()


@pytest.fixture(scope="session")
def amqp_vhost(rabbit_server: RabbitServer) -> Iterator[str]:
    """A vhost of this test run's own, deleted at its end."""
    url = rabbit_server.create_vhost()
    try:
        yield url
    finally:
        rabbit_server.delete_vhost(url)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A Redis owned by this test run: TEST_REDIS_URL, or a private redis-server."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        if urlsplit(given).port in (None, SHARED_REDIS_PORT):
            raise RuntimeError("TEST_REDIS_URL must not be the shared Redis on port 6379")
        yield given
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def new_broker(
    broker_kind: str, redis_server_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[int], str]]:
    """Make a broker no other worker consumes: a Redis db (emptied) or a new vhost."""
    made: list[str] = []

    def make(redis_db: int) -> str:
        if broker_kind == "redis":
            url = redis_server_url.rsplit("/", 1)[0] + f"/{redis_db}"
            client = redis.Redis.from_url(url)
            client.flushdb()
            client.close()
            return url
        url = request.getfixturevalue("rabbit_server").create_vhost()
        made.append(url)
        return url

    yield make
    for url in made:
        request.getfixturevalue("rabbit_server").delete_vhost(url)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The private Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Every setting the project reads: a developer's shell must not leak into the suite,
    # and one test's settings must not leak into the next.
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    # Tracing is off unless a test turns it on (OTEL_* variables of a developer's shell).
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name, raising=False)
    # In-process clients must not keep breaker state in whatever Redis REDIS_URL defaults
    # to (a shared one); tests of the breaker turn it on with their own private Redis.
    # Worker processes do not inherit this: tests/support/celery_worker.py starts them
    # from the defaults and tests/integration/conftest.py's SUITE_OVERRIDES only.
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "0")
    # Nor budget state: an upstream with no rate configured has no budget in-process
    # (tests of the budget configure a rate, or pass their own Redis client).
    monkeypatch.setenv("BUDGET_ADAPTIVE", "false")
    reset_settings()
    yield
    reset_settings()
