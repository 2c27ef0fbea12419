"""The fleet-wide budget: a token bucket in Redis with classes, a concurrency limit,
pauses and an adaptive rate (fakeredis runs its Lua scripts; the fleet's own tests run
real workers in tests/chaos/test_budget.py)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from apis import CmsAPI, PokeAPI, SemaphoreAPI, errors
from apis.budget import (
    BULK,
    DECREASE,
    LEARNT,
    OPEN,
    OPEN_RATE,
    OPEN_UNUSED,
    PROBE_RATE,
    SLOW,
    SLOW_START_DOUBLING,
    SLOW_START_EXIT,
    Budget,
    budget_keys,
    job_class,
)
from apis.config import ApiSettings, RateLimitPolicy, UpstreamConfig
from redisconn import RedisTarget
from settings import ConfigurationError, checked_settings, setting_names
from tests.support.redis_server import free_port

BASE = "http://pokeapi.test/api/v2"


def config(url: str = "redis://x/0", **policy) -> UpstreamConfig:
    return UpstreamConfig(
        service="pokeapi",
        base_url=BASE,
        state_redis=RedisTarget.from_url(url),
        rate_limit=RateLimitPolicy(**policy),
    )


class Sleeps(list[float]):
    """A sleep that only records: the budget's reservations show in what it was asked."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def budget(server, sleeps: Sleeps | None = None, **policy) -> Budget:
    sleep = Sleeps() if sleeps is None else sleeps
    return Budget(config(**policy), fakeredis.FakeRedis(server=server), sleep=sleep)


def test_a_burst_goes_at_once_then_callers_queue_at_the_rate(server) -> None:
    """Burst 2 at 5/s: two free tokens, then reservations 0.2 s apart."""
    sleeps = Sleeps()
    shared = budget(server, sleeps, rate=5, burst=2)
    started = time.monotonic()
    for _ in range(5):
        shared.acquire()
    # Each reservation 0.2 s after the last, less the real time between the calls: a
    # token that real time refilled meanwhile (a loaded machine) is taken without a wait.
    refilled = int((time.monotonic() - started) * 5)
    assert max(0, 3 - refilled) <= len(sleeps) <= 3
    assert sleeps == sorted(sleeps)
    assert sleeps == pytest.approx([0.2, 0.4, 0.6][: len(sleeps)], abs=0.15)


def test_no_thread_waits_beyond_the_bound_and_nothing_is_reserved_then(server) -> None:
    """Throttled carries the wait; the refused call does not push later callers back."""
    sleeps = Sleeps()
    shared = budget(server, sleeps, rate=1, burst=1, max_wait=0.5)
    shared.acquire("GET", "/pokemon/a")
    for _ in range(3):
        with pytest.raises(errors.Throttled) as held:
            shared.acquire("GET", "/pokemon/b")
        assert 0.5 < held.value.retry_after <= 1.0
        assert held.value.path == "/pokemon/b"
    assert sleeps == []


def test_the_budget_is_shared_by_every_process(server) -> None:
    """Two budgets on one Redis (two workers) draw from one bucket."""
    first, sleeps = budget(server, rate=1, burst=1), Sleeps()
    second = budget(server, sleeps, rate=1)
    first.acquire()
    second.acquire()
    assert len(sleeps) == 1
    assert sleeps[0] > 0.5


def test_bulk_never_reserves_ahead_of_on_demand_and_keeps_its_share(server) -> None:
    """With on-demand calls queued for tokens, a bulk call takes one token of its own
    share at once (no reservation behind them), then is held back; the next on-demand
    call is pushed back by that one token only."""
    sleeps = Sleeps()
    shared = budget(server, sleeps, rate=10, burst=1, bulk_share=0.1)
    shared.acquire()  # the one free token
    for _ in range(5):
        shared.acquire()  # on-demand reservations: 0.1 .. 0.5 s ahead
    assert len(sleeps) == 5
    token = job_class.set(BULK)
    try:
        shared.acquire()  # bulk's own share (10% of the rate): at once, no reservation
        assert len(sleeps) == 5
        impatient = budget(server, Sleeps(), rate=10, burst=1, bulk_share=0.1, max_wait=0.05)
        with pytest.raises(errors.Throttled):
            impatient.acquire()  # its share spent, and no token free: never queued
    finally:
        job_class.reset(token)
    shared.acquire()
    assert sleeps[-1] == pytest.approx(0.7, abs=0.15)  # 0.5, then the bulk token, then this


def test_a_429_pauses_the_fleet_and_cuts_the_rate_once_per_pause(server) -> None:
    """Retry-After 2: every process is paused 2 s, the rate falls by DECREASE once even
    when many calls see the 429, and grows back additively (the ceiling stays)."""
    shared = budget(server, rate=40, max_wait=1.0)
    other = budget(server, rate=40, max_wait=1.0)
    shared.acquire()
    assert shared.answered(429, 2.0) == pytest.approx(2.0, abs=0.05)
    assert other.answered(429, 2.0) is not None
    assert shared.rate == pytest.approx(40 * DECREASE, abs=0.01)
    with pytest.raises(errors.Throttled) as held:
        other.acquire()
    assert held.value.retry_after == pytest.approx(2.0, abs=0.1)
    assert other.rate == pytest.approx(40 * DECREASE, abs=0.01)


def test_blocked_is_a_pause_or_a_token_beyond_the_bound_not_a_queue(server) -> None:
    """RabbitMQ's admission cancels an upstream's consumer on `blocked` alone: calls
    queued for tokens inside the wait bound are `held` but not blocked; a call that
    found none within it, or a pause the upstream asked for, blocks."""
    queued = budget(server, rate=2, burst=1, max_wait=1.0)
    queued.acquire()
    queued.acquire()  # the next token reserved, 0.5 s ahead
    assert queued.held()
    assert not queued.blocked()
    queued.acquire()  # a second ahead: still inside the bound
    with pytest.raises(errors.Throttled):
        queued.acquire()
    assert queued.blocked()

    paused = budget(fakeredis.FakeServer(), rate=40, max_wait=1.0)
    assert not paused.blocked()
    paused.answered(429, 2.0)
    assert paused.blocked()


def test_other_answers_teach_nothing(server) -> None:
    """A 503 without Retry-After, a 500 or a 404 neither pause nor cut."""
    shared = budget(server, rate=40)
    for status, after in ((503, None), (500, None), (404, None), (200, None)):
        assert shared.answered(status, after) is None
    shared.acquire()
    assert shared.rate == 40


def test_with_no_rate_configured_the_fleet_starts_slow_and_a_429_halves_the_probe(
    server,
) -> None:
    """No rate configured, nothing learnt: the fleet starts at PROBE_RATE (half a
    second's worth at once, then reservations), not unbounded; the first 429 halves the
    probe rate (TCP's slow-start exit) and ends the slow start; a second one after the
    pause cuts by DECREASE."""
    sleeps = Sleeps()
    shared = budget(server, sleeps, max_wait=1.0)
    calls = int(PROBE_RATE)
    for _ in range(calls):
        shared.acquire()
    assert shared.phase == SLOW
    assert PROBE_RATE <= shared.rate < PROBE_RATE * 2
    assert len(sleeps) >= calls // 2 - 1  # paced beyond the first half second's worth
    probe = shared.rate
    shared.answered(429, 0)
    assert shared.phase == LEARNT
    assert shared.rate == pytest.approx(probe * SLOW_START_EXIT, rel=0.2)
    learnt = shared.rate
    shared.answered(429, 0)
    assert shared.rate == pytest.approx(learnt * DECREASE, rel=0.2)


def test_slow_start_doubles_while_used_and_opens_without_a_429(server) -> None:
    """The probe rate doubles per SLOW_START_DOUBLING while the fleet asks for it, and an
    upstream that reaches OPEN_RATE with no 429 is unbounded: no round trip per call."""
    shared = budget(server, max_wait=1.0)
    shared.acquire()
    state = shared.keys[0]
    client = fakeredis.FakeRedis(server=server)
    grown = float(client.hget(state, "grown") or 0)
    client.hset(state, mapping={"grown": grown - SLOW_START_DOUBLING * 1000, "ask_n": 1000})
    shared.acquire()
    assert shared.rate == pytest.approx(PROBE_RATE * 2, rel=0.1)  # one doubling
    client.hset(
        state,
        mapping={"rate": OPEN_RATE / 2, "grown": grown - SLOW_START_DOUBLING * 1000, "ask_n": 1000},
    )
    shared.acquire()
    assert shared.phase == OPEN
    assert shared.rate == 0
    asked = int(client.hget(state, "win_n") or 0)
    for _ in range(20):
        shared.acquire()  # trusted: "unbounded"
    assert int(client.hget(state, "win_n") or 0) <= asked + 1


def test_slow_start_opens_once_past_open_unused_when_the_fleet_asks_less(server) -> None:
    """A probe past OPEN_UNUSED that the fleet no longer asks half of: unbounded (the
    upstream took all it was sent); below OPEN_UNUSED the same lull keeps it slow."""
    shared = budget(server, max_wait=1.0)
    shared.acquire()
    client = fakeredis.FakeRedis(server=server)
    state = shared.keys[0]
    client.hset(state, mapping={"rate": OPEN_UNUSED / 2, "ask_n": 0, "ask_prev": 0})
    shared.acquire()
    assert shared.phase == SLOW
    # A millisecond back: the script judges the probe only once Redis's clock has moved
    # on from its last change, and two calls can fall in the same millisecond.
    grown = float(client.hget(state, "grown") or 0)
    client.hset(state, mapping={"rate": OPEN_UNUSED, "ask_n": 0, "ask_prev": 0, "grown": grown - 1})
    shared.acquire()
    assert shared.phase == OPEN
    assert shared.rate == 0


def test_slow_start_does_not_grow_while_the_fleet_asks_little(server) -> None:
    """An idle fleet proves nothing: seconds without calls do not double the probe."""
    shared = budget(server, max_wait=1.0)
    shared.acquire()
    client = fakeredis.FakeRedis(server=server)
    grown = float(client.hget(shared.keys[0], "grown") or 0)
    client.hset(shared.keys[0], mapping={"grown": grown - 5000, "ask_n": 0, "ask_prev": 0})
    shared.acquire()
    assert shared.rate == pytest.approx(PROBE_RATE, rel=0.1)


def test_what_the_fleet_learnt_is_kept_by_new_processes_and_outlives_a_lost_state(
    server,
) -> None:
    """A new process reads the fleet's learnt rate instead of starting over; and when
    Redis loses the state, a process that knew it puts it back rather than probing."""
    first = budget(server, max_wait=1.0)
    for _ in range(10):
        first.acquire()
    first.answered(429, 0)
    learnt = first.rate
    late = budget(server, max_wait=1.0)
    late.acquire()
    assert late.rate == pytest.approx(learnt, rel=0.1)
    assert late.phase == LEARNT

    fakeredis.FakeRedis(server=server).flushall()
    first.acquire()
    assert first.phase == LEARNT
    assert first.rate == pytest.approx(learnt, rel=0.1)


def test_with_learning_off_there_is_no_slow_start(server) -> None:
    """BUDGET_ADAPTIVE=false with a concurrency limit: the budget counts permits only."""
    shared = budget(server, concurrency=4, adaptive=False)
    shared.acquire()
    assert shared.rate == 0


def test_an_open_upstream_s_first_429_sets_a_rate_from_what_was_sent(server) -> None:
    """Slow start found no limit (open), then a 429: 30 calls in the last second give the
    fleet a rate of half of that (nothing was counted as accepted yet); a second 429
    after the pause cuts it by DECREASE."""
    fakeredis.FakeRedis(server=server).hset(
        budget_keys("", "pokeapi")[0], mapping={"phase": OPEN, "rate": 0}
    )
    shared = budget(server, max_wait=1.0)
    for _ in range(30):
        shared.acquire()
    assert shared.rate == 0
    shared.answered(429, 0)
    assert shared.rate == pytest.approx(15, abs=0.01)
    shared.answered(429, 0)
    assert shared.rate == pytest.approx(15 * DECREASE, abs=0.1)


def test_the_concurrency_limit_counts_requests_in_flight(server) -> None:
    """Concurrency 2: a third call waits until one is answered (then it goes)."""
    shared = budget(server, concurrency=2, max_wait=0.1)
    first, _second = shared.acquire(), shared.acquire()
    with pytest.raises(errors.Throttled):
        shared.acquire()
    shared.release(first)
    shared.acquire()


def test_redis_away_falls_back_to_this_processes_share() -> None:
    """Redis down: the process's own bucket at the last known rate / processes."""
    sleeps = Sleeps()
    shared = Budget(
        config(url=f"redis://127.0.0.1:{free_port()}/0", rate=4, max_wait=1.0), sleep=sleeps
    )
    shared.processes = 2  # as counted in Redis while it answered
    for _ in range(3):
        shared.acquire()
    assert shared.in_fallback
    assert sleeps == pytest.approx([0.5, 1.0], abs=0.05)  # 2/s: this process's half
    with pytest.raises(errors.Throttled):
        shared.acquire()


def test_no_redis_turns_it_off() -> None:
    """Off means no Redis at all."""
    shared = Budget(UpstreamConfig("pokeapi", BASE, rate_limit=RateLimitPolicy(rate=5)))
    assert not shared.enabled
    for _ in range(20):
        shared.acquire()


def test_each_upstream_reads_the_variables_its_entry_names(monkeypatch) -> None:
    """POKEAPI_RATE_LIMIT, _BURST and POKEAPI_CONCURRENCY; the bound and share shared."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("POKEAPI_RATE_LIMIT", "5")
    monkeypatch.setenv("POKEAPI_RATE_LIMIT_BURST", "8")
    monkeypatch.setenv("POKEAPI_CONCURRENCY", "4")
    monkeypatch.setenv("SEMAPHORE_RATE_LIMIT", "0.5")
    monkeypatch.setenv("RATE_LIMIT_MAX_WAIT", "0.5")
    monkeypatch.setenv("BUDGET_BULK_SHARE", "0.2")
    settings = ApiSettings(semaphore_api_token="token-for-the-test")
    pokeapi = PokeAPI(PokeAPI.configure(settings)).budget
    semaphore = SemaphoreAPI(SemaphoreAPI.configure(settings)).budget
    cms = CmsAPI(CmsAPI.configure(settings)).budget
    assert pokeapi.policy == RateLimitPolicy(
        rate=5, burst=8, max_wait=0.5, concurrency=4, bulk_share=0.2, adaptive=False
    )  # adaptive: the suite turns learning off in-process (tests/conftest.py)
    assert semaphore.policy.rate == 0.5
    assert cms.policy.rate == 0
    assert not cms.enabled  # no rate, nothing learnt: no Redis call at all
    assert pokeapi.keys != semaphore.keys
    assert {"POKEAPI_CONCURRENCY", "CMS_RATE_LIMIT_BURST"} <= setting_names()


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("POKEAPI_RATE_LIMIT", "fast", "POKEAPI_RATE_LIMIT='fast': must be a number"),
        ("CMS_CONCURRENCY", "-1", "CMS_CONCURRENCY='-1': must be at least 0"),
        ("RATE_LIMIT_MAX_WAIT", "5", "RATE_LIMIT_MAX_WAIT='5': must be at most 1"),
    ],
)
def test_a_bad_budget_value_stops_the_start_with_one_line(monkeypatch, name, value, line) -> None:
    """Validated at start, named as the user wrote it."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as bad:
        checked_settings()
    assert line in bad.value.lines


def test_a_429_is_retried_after_the_pause_and_is_no_failure(server, sandbox) -> None:
    """One 429 with Retry-After 0.3: the fleet pauses, the same call goes again once the
    budget allows it, and the breaker counts nothing."""
    sandbox.inject("pokemon", "rate_limited", retry_after=0, times=1)
    sleeps = Sleeps()
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_backoff_initial=0)
    client = PokeAPI(PokeAPI.configure(settings), sleep=sleeps)
    client.budget = budget(server, sleeps, rate=10, burst=1, max_wait=1.0)
    assert client.get_pokemon("pikachu").data["id"] == 25
    assert sandbox.calls("pokemon") == 2
    # Cut, then growing back by 0.5/s from the end of the pause.
    assert 10 * DECREASE <= client.budget.rate < 10 * DECREASE + 1


def test_a_long_pause_holds_the_call_back_instead_of_sleeping(server, sandbox) -> None:
    """Retry-After 30: no thread sleeps it out; the call is Throttled (the job is put
    off without using a retry) and one request was sent."""
    sandbox.inject("pokemon", "rate_limited", retry_after=30, times=1)
    sleeps = Sleeps()
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_backoff_initial=0)
    client = PokeAPI(PokeAPI.configure(settings), sleep=sleeps)
    client.budget = budget(server, sleeps, rate=10, max_wait=1.0)
    with pytest.raises(errors.Throttled) as held:
        client.get_pokemon("pikachu")
    assert held.value.retry_after == pytest.approx(30, abs=0.5)
    assert sandbox.calls("pokemon") == 1
    assert max(sleeps, default=0) <= 1.0


def test_a_call_that_failed_upstream_before_it_was_throttled_reports_the_failure(
    server, sandbox
) -> None:
    """503 then no token: the 503 is raised, so the job's retry budget pays for the call."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_backoff_initial=0)
    client = PokeAPI(PokeAPI.configure(settings), sleep=Sleeps())
    client.budget = budget(server, rate=1, burst=1, max_wait=0.3)
    with pytest.raises(errors.ServerError):
        client.get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1
