"""The circuit breaker on a real Redis: shared by processes, round trips counted by Redis.

Round trips are read from the server's own counters (`INFO commandstats`), on a Redis of
this module alone so no other client's commands are counted.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from apis import PokeAPI, errors
from apis.breaker import CLOSED_TRUST_SECONDS, CircuitBreaker
from apis.config import ApiSettings, CircuitPolicy, UpstreamConfig
from tests.support.celery_worker import REPO_ROOT

BASE = "http://pokeapi.test/api/v2"
SERVER_ERROR = errors.ServerError("upstream server error", "pokeapi", "GET", "/pokemon/x", 503)

# One process with one breaker: optionally record a failed call, then say whether the
# next call would be allowed. Run as separate interpreters, as separate workers are.
ONE_PROCESS = """
import sys
from apis import errors
from apis.breaker import CircuitBreaker
from apis.config import CircuitPolicy, UpstreamConfig

url, action = sys.argv[1], sys.argv[2]
config = UpstreamConfig("pokeapi", "http://pokeapi.test/api/v2", state_redis_url=url,
                        circuit=CircuitPolicy(2, 60.0, 30.0))
breaker = CircuitBreaker(config)
if action == "fail":
    error = errors.ServerError("upstream server error", "pokeapi", "GET", "/x", 503)
    breaker.after_call(breaker.before_call(), error)
try:
    breaker.before_call()
    print("allowed")
except errors.CircuitOpen:
    print("refused")
"""


@pytest.fixture
def client(own_redis: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(own_redis)
    connection.flushall()
    yield connection
    connection.close()


def config(url: str | None, threshold: int = 3) -> UpstreamConfig:
    return UpstreamConfig(
        service="pokeapi",
        base_url=BASE,
        state_redis_url=url,
        circuit=CircuitPolicy(threshold, 60.0, 30.0),
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sent(client: redis.Redis) -> dict[str, int]:
    """Commands clients sent since the last reset (what a script ran inside is left out)."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): value["calls"]
        for name, value in stats.items()
        if name.removeprefix("cmdstat_").startswith(("evalsha", "eval", "script"))
    }


def in_a_process(url: str, action: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, url, action],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_failures_in_two_processes_open_one_circuit_that_a_third_sees(
    own_redis: str, client: redis.Redis
) -> None:
    """Threshold 2: one failure in each of two processes opens it for every process."""
    assert in_a_process(own_redis, "fail") == "allowed"  # one failure counted: still closed
    assert in_a_process(own_redis, "fail") == "refused"  # the second, from another process
    here = CircuitBreaker(config(own_redis, threshold=2))  # and this one, a third
    with pytest.raises(errors.CircuitOpen):
        here.before_call()
    assert client.exists("circuit:{pokeapi}:open")


def test_a_healthy_upstream_costs_one_round_trip_in_a_while(client: redis.Redis) -> None:
    """With nothing counted a success sends nothing and a closed reading is trusted for
    CLOSED_TRUST_SECONDS; a failure is sent, and the next success resets it."""
    clock = FakeClock()
    b = CircuitBreaker(config("unused"), client, clock=clock)
    b.after_call(b.before_call(), SERVER_ERROR)  # loads both scripts
    b.after_call(b.before_call(), None)
    client.config_resetstat()
    for _ in range(5):
        b.after_call(b.before_call(), None)
    assert sent(client) == {"evalsha": 1}  # one check, then trusted
    clock.now += CLOSED_TRUST_SECONDS
    for _ in range(5):
        b.after_call(b.before_call(), None)
    assert sent(client) == {"evalsha": 2}  # one check more once the trust ran out
    b.after_call(b.before_call(), SERVER_ERROR)
    assert sent(client) == {"evalsha": 3}  # the failure (the reading was still trusted)
    b.after_call(b.before_call(), None)
    assert sent(client) == {"evalsha": 5}  # asked again after its own failure, and reset
    assert not client.exists("circuit:{pokeapi}:failures")


def test_a_zero_threshold_sends_nothing_to_the_redis_it_is_given(
    own_redis: str, client: redis.Redis
) -> None:
    """Off: a breaker pointed at a live Redis never sends it a command, whatever happens."""
    client.config_resetstat()
    connections = client.info("stats")["total_connections_received"]
    off = CircuitBreaker(config(own_redis, threshold=0))
    assert not off.enabled
    for _ in range(10):
        off.after_call(off.before_call(), SERVER_ERROR)
    assert off.before_call().probe is None
    commands = set(client.info("commandstats"))
    assert commands <= {"cmdstat_config|resetstat", "cmdstat_info"}  # this test's own
    assert client.info("stats")["total_connections_received"] == connections


def test_no_redis_url_turns_it_off() -> None:
    """No REDIS_URL: no breaker, every call allowed."""
    no_redis = CircuitBreaker(config(None, threshold=1))
    assert not no_redis.enabled
    for _ in range(10):
        no_redis.after_call(no_redis.before_call(), SERVER_ERROR)
    assert no_redis.before_call().probe is None


def test_the_client_sends_nothing_while_the_circuit_is_open(
    own_redis: str, client: redis.Redis, sandbox: Any
) -> None:
    """Whole calls count once each; once open, no request leaves the process."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    settings = ApiSettings(
        pokeapi_base_url=sandbox.pokeapi_url,
        http_retry_attempts=2,
        http_retry_backoff_initial=0,
        redis_url=own_redis,
        circuit_failure_threshold=2,
    )
    api = PokeAPI(PokeAPI.configure(settings))
    assert api.breaker.enabled
    for _ in range(2):
        with pytest.raises(errors.ServerError):
            api.get_pokemon("mew")
    assert sandbox.calls("pokemon") == 4
    with pytest.raises(errors.CircuitOpen):
        api.get_pokemon("mew")
    assert sandbox.calls("pokemon") == 4
