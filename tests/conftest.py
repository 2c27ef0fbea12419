"""Suite-wide fixtures: a private Redis, the sandbox upstream, and a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from apis import reset_clients
from tests.support.redis_server import RedisServer
from worker.settings import get_worker_settings, setting_names

pytest_plugins = ["sandbox.pytest_plugin"]

SHARED_REDIS_PORT = 6379


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
    # In-process clients must not keep breaker state in whatever Redis REDIS_URL defaults
    # to (a shared one); tests of the breaker turn it on with their own private Redis.
    # Worker processes do not inherit this: tests/support/celery_worker.py starts them
    # from the defaults and tests/integration/conftest.py's SUITE_OVERRIDES only.
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "0")
    reset_clients()
    get_worker_settings.cache_clear()
    yield
    reset_clients()
    get_worker_settings.cache_clear()
