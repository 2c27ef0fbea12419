"""The guards fail safe: with their Redis slow (`DEBUG SLEEP`), each process falls back
to a local token bucket at its share of the rate and a local consecutive-failure
breaker, so the upstream never sees more than the budget or the breaker allows.

On a Redis of this module alone, which allows DEBUG: DEBUG SLEEP blocks every client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from apis import PokeAPI, errors
from apis.config import ApiSettings
from telemetry.metrics import GUARD_FALLBACK
from tests.support.celery_worker import wait_for
from tests.support.redis_server import RedisServer

SLOW_SECONDS = 4


@pytest.fixture(scope="module")
def debug_redis() -> Iterator[str]:
    server = RedisServer(args=("--enable-debug-command", "yes")).start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def slow_redis(debug_redis: str) -> Iterator[tuple[str, threading.Thread]]:
    """Redis answering nothing for SLOW_SECONDS once the thread starts (then itself)."""
    connection = redis.Redis.from_url(debug_redis, socket_timeout=SLOW_SECONDS + 5)
    connection.flushall()
    sleeper = threading.Thread(
        target=connection.execute_command, args=("DEBUG", "SLEEP", SLOW_SECONDS)
    )
    yield debug_redis, sleeper
    sleeper.join(timeout=SLOW_SECONDS + 5)
    connection.close()


def asleep(url: str, sleeper: threading.Thread) -> None:
    """Start DEBUG SLEEP and wait until the server no longer answers a PING in 0.1 s."""
    sleeper.start()
    probe = redis.Redis.from_url(url, socket_timeout=0.1)

    def blocked() -> bool:
        try:
            probe.ping()
        except redis.TimeoutError:
            return True
        return False

    try:
        wait_for(blocked, timeout=5)
    finally:
        probe.close()


def client_of(url: str, sandbox: Any, **settings: Any) -> PokeAPI:
    api = ApiSettings(
        redis_url=url,
        pokeapi_base_url=sandbox.pokeapi_url,
        http_retry_attempts=1,
        http_retry_backoff_initial=0,
        **settings,
    )
    return PokeAPI(PokeAPI.configure(api))


def hammer(client: PokeAPI, seconds: float, threads: int = 8) -> list[str]:
    """Call the upstream from `threads` threads for `seconds`; what each call became."""
    ends: list[str] = []
    deadline = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < deadline:
            try:
                client.get_pokemon("pikachu")
                ends.append("ok")
            except errors.HeldBack as exc:
                ends.append(type(exc).__name__)
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            except errors.UpstreamError as exc:
                ends.append(type(exc).__name__)

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(loop)
    return ends


def test_a_slow_redis_keeps_the_budget_with_a_local_bucket(
    slow_redis, sandbox: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """POKEAPI_RATE_LIMIT=5 and Redis asleep for 4 s: the upstream sees at most 5/s (plus
    the bucket's burst) while 8 threads call as fast as they can; logged once."""
    url, sleeper = slow_redis
    monkeypatch.setenv("POKEAPI_RATE_LIMIT", "5")
    client = client_of(url, sandbox)
    client.get_pokemon("pikachu")  # the budget read once: its rate and processes known
    asleep(url, sleeper)
    began = sandbox.calls("pokemon")
    started = time.monotonic()
    hammer(client, SLOW_SECONDS - 0.5)
    elapsed = time.monotonic() - started
    sent = sandbox.calls("pokemon") - began
    assert caplog.text.count("budget of pokeapi unavailable, using this process's local") == 1
    # The rate, plus one half-second burst of the local bucket and one of the shared
    # bucket when Redis answers again.
    assert sent <= 5 * elapsed + 6, (sent, elapsed)
    assert sent >= 5  # not vacuous: calls did go through, at the local rate


def test_a_slow_redis_keeps_the_breaker_with_a_local_count(
    slow_redis, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIRCUIT_FAILURE_THRESHOLD=3, an upstream answering 503 and Redis asleep: the
    upstream sees at most 3 failing calls from this process, then calls are refused."""
    url, sleeper = slow_redis
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "3")
    client = client_of(url, sandbox)
    client.get_pokemon("pikachu")
    sandbox.inject("pokemon", "status", status=503, times=None)
    asleep(url, sleeper)
    began = sandbox.calls("pokemon")
    ends = hammer(client, SLOW_SECONDS - 1)
    assert GUARD_FALLBACK.labels("pokeapi", "breaker")._value.get() == 1
    # The calls already past the breaker when the count was reached end too (the threads).
    assert sandbox.calls("pokemon") - began <= 3 + 8
    assert "CircuitOpen" in ends
