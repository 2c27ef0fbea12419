"""The shared rate limit: a token bucket in Redis that queues callers or holds them back."""

from __future__ import annotations

import fakeredis
import pytest

from apis import CmsAPI, PokeAPI, SemaphoreAPI, errors
from apis.config import ApiSettings, RateLimitPolicy, UpstreamConfig
from apis.ratelimit import RateLimiter
from redisconn import RedisTarget
from tests.support.redis_server import free_port

BASE = "http://pokeapi.test/api/v2"


def config(rate: float, burst: int = 0, max_wait: float = 10.0, url: str = "redis://x/0"):
    return UpstreamConfig(
        service="pokeapi",
        base_url=BASE,
        state_redis=RedisTarget.from_url(url),
        rate_limit=RateLimitPolicy(rate=rate, burst=burst, max_wait=max_wait),
    )


class Sleeps(list[float]):
    """A sleep that only records: the limiter's reservations show in what it was asked."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def limiter(server, sleeps: Sleeps, **policy) -> RateLimiter:
    return RateLimiter(config(**policy), fakeredis.FakeRedis(server=server), sleep=sleeps)


def test_a_burst_goes_at_once_then_callers_queue_at_the_rate(server) -> None:
    """Burst 2 at 5/s: two free tokens, then reservations 0.2 s apart."""
    sleeps = Sleeps()
    bucket = limiter(server, sleeps, rate=5, burst=2)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.2, 0.4, 0.6], abs=0.05)
    assert sleeps == waits[2:]


def test_the_default_burst_is_one_second_of_tokens(server) -> None:
    """Burst 0 means ceil(rate) tokens."""
    bucket = limiter(server, Sleeps(), rate=2.5)
    assert bucket.policy.capacity == 3
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.acquire() > 0


def test_a_wait_beyond_the_bound_is_held_back_and_reserves_nothing(server) -> None:
    """Throttled carries the wait; the refused call does not push later callers back."""
    sleeps = Sleeps()
    bucket = limiter(server, sleeps, rate=1, burst=1, max_wait=0.5)
    assert bucket.acquire("GET", "/pokemon/a") == 0.0
    for _ in range(3):
        with pytest.raises(errors.Throttled) as held:
            bucket.acquire("GET", "/pokemon/b")
        assert 0.5 < held.value.retry_after <= 1.0
        assert held.value.is_transient
        assert held.value.path == "/pokemon/b"
    assert sleeps == []


def test_the_bucket_is_shared_by_every_process(server) -> None:
    """Two limiters on one Redis (two workers) draw from one bucket."""
    first, second = limiter(server, Sleeps(), rate=1, burst=1), limiter(server, Sleeps(), rate=1)
    assert first.acquire() == 0.0
    assert second.acquire() > 0.5


def test_an_unreachable_redis_fails_open() -> None:
    """Redis down: no limit, no wait, no error."""
    sleeps = Sleeps()
    bucket = RateLimiter(
        config(rate=1, burst=1, url=f"redis://127.0.0.1:{free_port()}/0"), sleep=sleeps
    )
    assert [bucket.acquire() for _ in range(5)] == [0.0] * 5
    assert sleeps == []


def test_a_zero_rate_or_no_redis_turns_it_off() -> None:
    """Off means no Redis at all."""
    for bucket in (
        RateLimiter(config(rate=0)),
        RateLimiter(UpstreamConfig("pokeapi", BASE, rate_limit=RateLimitPolicy(rate=5))),
    ):
        assert not bucket.enabled
        assert [bucket.acquire() for _ in range(20)] == [0.0] * 20


def test_each_upstream_reads_its_own_settings(monkeypatch) -> None:
    """POKEAPI_RATE_LIMIT and friends, with their bursts and the shared wait bound."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("POKEAPI_RATE_LIMIT", "5")
    monkeypatch.setenv("POKEAPI_RATE_LIMIT_BURST", "8")
    monkeypatch.setenv("SEMAPHORE_RATE_LIMIT", "0.5")
    monkeypatch.setenv("RATE_LIMIT_MAX_WAIT", "3")
    settings = ApiSettings(semaphore_api_token="token-for-the-test")
    pokeapi = PokeAPI(PokeAPI.configure(settings)).rate_limiter
    semaphore = SemaphoreAPI(SemaphoreAPI.configure(settings)).rate_limiter
    cms = CmsAPI(CmsAPI.configure(settings)).rate_limiter
    assert pokeapi.policy == RateLimitPolicy(rate=5, burst=8, max_wait=3)
    assert semaphore.policy.capacity == 1
    assert pokeapi.enabled
    assert semaphore.enabled
    assert not cms.enabled
    assert pokeapi.key != semaphore.key


def test_every_attempt_takes_a_token_and_throttled_is_not_retried_in_place(server, sandbox) -> None:
    """Retries queue for tokens like first attempts; a held-back call sends nothing more."""
    sandbox.inject("pokemon", "status", status=503, times=1)
    sleeps = Sleeps()
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_backoff_initial=0)
    client = PokeAPI(PokeAPI.configure(settings), sleep=sleeps)
    client.rate_limiter = limiter(server, sleeps, rate=5, burst=1, max_wait=0.3)
    assert client.get_pokemon("pikachu").data["id"] == 25
    assert sandbox.calls("pokemon") == 2
    assert [s for s in sleeps if s] == [pytest.approx(0.2, abs=0.05)]
    with pytest.raises(errors.Throttled):
        client.get_pokemon("pikachu")
    with pytest.raises(errors.Throttled):
        client.get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 2


def test_a_call_that_failed_upstream_before_it_was_throttled_reports_the_failure(
    server, sandbox
) -> None:
    """503 then no token: the 503 is raised, so the job's retry budget pays for the call."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_backoff_initial=0)
    client = PokeAPI(PokeAPI.configure(settings), sleep=Sleeps())
    client.rate_limiter = limiter(server, Sleeps(), rate=1, burst=1, max_wait=0.3)
    with pytest.raises(errors.ServerError):
        client.get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1
