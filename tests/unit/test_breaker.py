"""The circuit breaker's states on a fake Redis: closed -> open -> half-open -> closed.

Sharing between processes, round trips and "off" are proven on a real Redis in
tests/integration/test_breaker_redis.py.
"""

from __future__ import annotations

import itertools
import logging
import pickle
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from apis import PokeAPI, errors
from apis.breaker import CLOSED_TRUST_SECONDS, CircuitBreaker
from apis.config import ApiSettings, CircuitPolicy, UpstreamConfig
from redisconn import RedisTarget
from tasks.base import DEFERRALS_HEADER, deferral_countdown, deferrals_of
from telemetry.metrics import GUARD_FALLBACK
from tests.support.celery_worker import wait_for
from tests.support.redis_server import free_port

BASE = "http://pokeapi.test/api/v2"
SERVER_ERROR = errors.ServerError("upstream server error", "pokeapi", "GET", "/pokemon/x", 503)
NOT_FOUND = errors.NotFound("not found", "pokeapi", "GET", "/pokemon/x", 404)
TIMEOUT = errors.UpstreamTimeout("timed out", "pokeapi", "GET", "/pokemon/x")


def config(threshold: int = 3, window: float = 60.0, cooldown: float = 30.0) -> UpstreamConfig:
    return UpstreamConfig(
        service="pokeapi",
        base_url=BASE,
        state_redis=RedisTarget.from_url("redis://unused.invalid:1/0"),
        circuit=CircuitPolicy(threshold, window, cooldown),
    )


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    server: fakeredis.FakeServer, clock: Callable[[], float] | None = None, **policy: Any
) -> CircuitBreaker:
    """A breaker on the fake server; with no clock given, it never trusts a reading."""
    return CircuitBreaker(
        config(**policy), fakeredis.FakeRedis(server=server), clock=clock or ever_later()
    )


def ever_later() -> Callable[[], float]:
    """A clock a minute later at each reading: every call asks Redis again."""
    ticks = itertools.count()
    return lambda: 60.0 * next(ticks)


def fail(b: CircuitBreaker, exc: BaseException = SERVER_ERROR, times: int = 1) -> None:
    for _ in range(times):
        b.after_call(b.before_call(), exc)


def test_threshold_transient_failures_open_the_circuit(server) -> None:
    """Three 503s in a row open it; the fourth call is refused with the cool-down left."""
    b = breaker(server, threshold=3, cooldown=30)
    fail(b, times=2)
    assert b.state() == "closed"
    fail(b, TIMEOUT)
    assert b.state() == "open"
    with pytest.raises(errors.CircuitOpen) as refused:
        b.before_call("GET", "/pokemon/mew")
    assert 29 < refused.value.retry_after <= 30
    assert refused.value.is_transient
    assert refused.value.path == "/pokemon/mew"


def test_permanent_errors_do_not_count_and_an_answer_resets(server) -> None:
    """404s are answers: they reset the count instead of adding to it."""
    b = breaker(server, threshold=3)
    fail(b, times=2)
    fail(b, NOT_FOUND, times=5)
    fail(b, times=2)
    assert b.state() == "closed"
    b.after_call(b.before_call(), None)
    fail(b, times=2)
    assert b.state() == "closed"


def test_a_trusted_closed_reading_lasts_until_its_time_or_an_own_failure(server) -> None:
    """Another process opening the circuit is seen within CLOSED_TRUST_SECONDS, and at
    once after a failure of this process's own."""
    clock = FakeClock()
    here, there = breaker(server, clock, threshold=1), breaker(server, threshold=1)
    here.after_call(here.before_call(), None)
    fail(there)
    assert here.before_call().probe is None  # still trusted: the call may go out
    clock.now += CLOSED_TRUST_SECONDS
    with pytest.raises(errors.CircuitOpen):
        here.before_call()

    other_server = fakeredis.FakeServer()
    here, there = breaker(other_server, clock, threshold=1), breaker(other_server, threshold=1)
    permit = here.before_call()
    fail(there)
    here.after_call(permit, SERVER_ERROR)
    with pytest.raises(errors.CircuitOpen):
        here.before_call()


def test_only_a_success_begun_while_failures_are_counted_resets_them(server) -> None:
    """A call that began before the first failure says nothing about the upstream since."""
    b = breaker(server, threshold=3)
    early = b.before_call()
    fail(b, times=2)
    b.after_call(early, None)
    fail(b)
    assert b.state() == "open"


def test_failures_older_than_the_window_are_forgotten(server) -> None:
    """The count expires a window after its first failure."""
    b = breaker(server, threshold=3, window=0.2)
    fail(b, times=2)
    wait_for(lambda: not server_keys(server, "failures"), timeout=3, what="window expiry")
    fail(b, times=2)
    assert b.state() == "closed"


def server_keys(server: fakeredis.FakeServer, suffix: str) -> list[bytes]:
    return fakeredis.FakeRedis(server=server).keys(f"circuit:{{pokeapi}}:{suffix}")


def test_after_the_cool_down_one_probe_goes_through_and_its_success_closes(server) -> None:
    """Half-open: one caller probes, the others wait; a success closes the circuit."""
    b = breaker(server, threshold=1, cooldown=0.2)
    fail(b)
    wait_for(lambda: b.state() == "half-open", timeout=3, what="half-open")
    probe = b.before_call()
    assert probe.probe is not None
    with pytest.raises(errors.CircuitOpen) as refused:
        b.before_call()
    assert refused.value.retry_after > 0
    b.after_call(probe, None)
    assert b.state() == "closed"
    assert b.before_call().probe is None


def test_a_failed_probe_opens_the_circuit_again(server) -> None:
    """Half-open: the probe's transient failure starts another cool-down at once."""
    b = breaker(server, threshold=1, cooldown=0.2)
    fail(b)
    wait_for(lambda: b.state() == "half-open", timeout=3, what="half-open")
    b.after_call(b.before_call(), SERVER_ERROR)
    assert b.state() == "open"
    with pytest.raises(errors.CircuitOpen):
        b.before_call()


def test_a_probe_that_sent_nothing_frees_its_slot(server) -> None:
    """A probe held back by the rate limit lets the next caller probe instead."""
    b = breaker(server, threshold=1, cooldown=0.2)
    fail(b)
    wait_for(lambda: b.state() == "half-open", timeout=3, what="half-open")
    probe = b.before_call()
    b.after_call(probe, errors.Throttled("no token", "pokeapi", retry_after=3.0))
    assert b.state() == "half-open"
    assert b.before_call().probe is not None


def test_a_late_success_does_not_cut_the_cool_down_short(server) -> None:
    """A call that started before the circuit opened cannot close it while open."""
    b = breaker(server, threshold=1)
    straggler = b.before_call()
    fail(b)
    b.after_call(straggler, None)
    assert b.state() == "open"


def test_an_unreachable_redis_falls_back_to_a_local_breaker(caplog) -> None:
    """Redis down: this process counts consecutive failures itself and opens at the
    threshold (it never fails open); one warning says why, and a gauge shows it."""
    cfg = config(threshold=3)
    b = CircuitBreaker(
        UpstreamConfig(
            service=cfg.service,
            base_url=BASE,
            state_redis=RedisTarget.from_url(f"redis://127.0.0.1:{free_port()}/0"),
            circuit=cfg.circuit,
        )
    )
    with caplog.at_level(logging.WARNING, logger="apis.breaker"):
        b.after_call(b.before_call(), SERVER_ERROR)
        b.after_call(b.before_call(), None)  # a success resets the count
        for _ in range(3):
            b.after_call(b.before_call(), SERVER_ERROR)
        with pytest.raises(errors.CircuitOpen) as refused:
            b.before_call()
    assert refused.value.retry_after == pytest.approx(cfg.circuit.cooldown_seconds, abs=1)
    warnings = [r for r in caplog.records if "local state" in r.getMessage()]
    assert len(warnings) == 1
    assert GUARD_FALLBACK.labels(cfg.service, "breaker")._value.get() == 1


def test_settings_reach_the_client(monkeypatch) -> None:
    """CIRCUIT_* and REDIS_URL from the environment configure every upstream's breaker."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "7")
    monkeypatch.setenv("CIRCUIT_COOLDOWN_SECONDS", "12")
    client = PokeAPI(PokeAPI.configure(ApiSettings()))
    assert client.breaker.enabled
    assert client.breaker.policy == CircuitPolicy(7, 60.0, 12.0)
    assert ApiSettings(redis_url="").redis_url is None


def test_circuit_open_survives_pickling() -> None:
    """Celery ships the exception between processes; retry_after must survive."""
    exc = errors.CircuitOpen("circuit open", "pokeapi", "GET", "/pokemon/x", None, "", 12.5)
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, errors.CircuitOpen)
    assert copy.retry_after == 12.5
    assert type(exc)(*exc.args).retry_after == 12.5


def test_a_deferral_waits_out_the_guard_with_jitter_below_the_cap() -> None:
    """Countdown = the guard's wait plus up to half again, never above the cap."""
    exc = errors.CircuitOpen("circuit open", retry_after=10.0)
    countdowns = [deferral_countdown(exc, cap=100) for _ in range(200)]
    assert all(10 <= c <= 15 for c in countdowns)
    assert len(set(countdowns)) > 1
    assert deferral_countdown(exc, cap=4) == 4


def test_the_deferral_count_comes_from_the_message_headers() -> None:
    """Missing or garbled headers count as no deferral."""

    class Request:
        def __init__(self, headers: Any) -> None:
            self.headers = headers

    assert deferrals_of(Request({DEFERRALS_HEADER: 3})) == 3
    assert deferrals_of(Request(None)) == 0
    assert deferrals_of(Request({DEFERRALS_HEADER: "x"})) == 0
    assert deferrals_of(object()) == 0
