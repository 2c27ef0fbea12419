"""Freshness and single flight against a real Redis, with real threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from results.keys import Keys
from results.single_flight import JobStart, SingleFlightBusy, fetch_once, job_began_at
from results.store import Fetched, Freshness, ResultStore, now
from tests.support.celery_worker import wait_for
from tests.support.metrics import sample

NO_FRESHNESS = Freshness(0)


def make_store(url: str) -> ResultStore:
    return ResultStore(redis.Redis.from_url(url), Keys(), events_maxlen=100, failures_maxlen=100)


def redis_ms(store: ResultStore) -> int:
    seconds, micros = store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def single_flight_waits() -> float:
    return sample("apiworker_single_flight_waits_total", kind="pokemon")


def test_concurrent_callers_make_one_fetch_even_without_freshness(redis_url: str) -> None:
    """Twenty threads, max_age 0: one fetch, every caller gets its result."""
    store = make_store(redis_url)
    calls = 0
    gate = threading.Event()
    lock = threading.Lock()

    def fetch(_: object) -> Fetched:
        nonlocal calls
        with lock:
            calls += 1
        assert gate.wait(15)  # hold the lock while the others pile up
        return Fetched("pokemon", "mew", {"name": "mew"}, now())

    def job() -> object:
        return fetch_once(
            store,
            "pokemon",
            "mew",
            fetch,
            task_id="t",
            max_age=0,
            lock_seconds=10,
            wait_seconds=10,  # all of them wait in place, so all twenty share the fetch
        )

    waits_before = single_flight_waits()
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(job) for _ in range(20)]
        # The fetch ends only once the other nineteen have claimed and found it held: a
        # caller whose first claim came after the write began later than it, and with
        # max_age 0 rightly fetches again.
        wait_for(lambda: single_flight_waits() - waits_before >= 19, timeout=10,
                 what="nineteen callers waiting")  # fmt: skip
        gate.set()
        values = [future.result(timeout=20) for future in futures]
    assert values == [{"name": "mew"}] * 20
    assert calls == 1


def test_a_result_older_than_the_job_is_refetched_when_freshness_is_off(redis_url: str) -> None:
    """max_age 0 never serves a result stored before the job began."""
    store = make_store(redis_url)
    store.write(Fetched("pokemon", "mew", {"v": 1}, now() - 5), "old")
    # Freshness is on Redis's clock: the job begins in a later millisecond than the write.
    written = int(store.redis.hget("meta:{pokemon:mew}", "stored_ms"))
    wait_for(lambda: redis_ms(store) > written, timeout=1, interval=0.0005)
    value = fetch_once(
        store,
        "pokemon",
        "mew",
        lambda _: Fetched("pokemon", "mew", {"v": 2}, now()),
        task_id="new",
        max_age=0,
        lock_seconds=10,
    )
    assert value == {"v": 2}


def test_a_fresh_result_is_served_without_fetching(redis_url: str) -> None:
    """Within max_age the stored value is the answer."""
    store = make_store(redis_url)
    store.write(Fetched("pokemon", "mew", {"v": 1}, now() - 5), "old")

    def fetch(_: object) -> Fetched:
        raise AssertionError("must not fetch")

    value = fetch_once(store, "pokemon", "mew", fetch, task_id="t", max_age=60, lock_seconds=10)
    assert value == {"v": 1}


def test_a_failed_fetch_releases_the_lock_for_the_next_job(redis_url: str) -> None:
    """The lock of a failed fetch is freed at once, not left to expire."""
    store = make_store(redis_url)

    def failing(_: object) -> Fetched:
        raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError):
        fetch_once(store, "pokemon", "mew", failing, task_id="a", max_age=0, lock_seconds=30)
    assert store.redis.exists(store.keys.lock("pokemon", "mew")) == 0
    value = fetch_once(
        store,
        "pokemon",
        "mew",
        lambda _: Fetched("pokemon", "mew", {"v": 3}, now()),
        task_id="b",
        max_age=0,
        lock_seconds=30,
    )
    assert value == {"v": 3}
    assert store.redis.exists(store.keys.lock("pokemon", "mew")) == 0


def test_a_fetch_longer_than_its_lease_keeps_the_lease_until_it_writes(redis_url: str) -> None:
    """The holder renews its 1 s lease through a 3 s fetch; nobody else may claim it."""
    store = make_store(redis_url)
    lock_key = store.keys.lock("pokemon", "mew")
    inside = threading.Event()
    release = threading.Event()

    def slow_fetch(_: object) -> Fetched:
        inside.set()
        release.wait(10)
        return Fetched("pokemon", "mew", {"v": 1}, now())

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(
            fetch_once, store, "pokemon", "mew", slow_fetch, task_id="h", max_age=0,
            lock_seconds=1.0,
        )  # fmt: skip
        assert inside.wait(5)
        token = store.redis.get(lock_key)
        deadline = now() + 3.0
        while now() < deadline:  # three lease lengths
            assert store.redis.get(lock_key) == token, "the lease lapsed while its fetch ran"
            assert (
                store.claim(
                    "pokemon", "mew", started=now(), freshness=NO_FRESHNESS, token="x", ttl=1
                ).state
                == "wait"
            )
            time.sleep(0.05)  # poll interval
        release.set()
        assert holder.result(timeout=5) == {"v": 1}
    assert store.redis.exists(lock_key) == 0


def _renewals(client: redis.Redis) -> int:
    """PEXPIREs Redis ran (the renewal script's command; nothing else here sends it)."""
    return int(client.info("commandstats").get("cmdstat_pexpire", {}).get("calls", 0))


def test_fetches_shorter_than_a_third_of_the_lease_cost_no_renewal(redis_url: str) -> None:
    """Leases are renewed when due, not whenever another job takes one: 200 fetches of
    10 ms under a 3 s lease, 16 at a time, make no renewal; a fetch still running a third
    of the lease later gets its lease renewed."""
    store = make_store(redis_url)
    before = _renewals(store.redis)

    def short_fetch(name: str) -> object:
        def fetch(_: object) -> Fetched:
            time.sleep(0.01)  # the upstream call's duration, not a synchronisation
            return Fetched("pokemon", name, {"v": 1}, now())

        return fetch_once(store, "pokemon", name, fetch, task_id=name, max_age=0, lock_seconds=3.0)

    with ThreadPoolExecutor(16) as pool:
        assert len(list(pool.map(short_fetch, [f"p{i}" for i in range(200)]))) == 200
    assert _renewals(store.redis) == before

    def long_fetch(_: object) -> Fetched:
        # Runs until its lease is renewed (due 1 s in), or fails after three lease lengths.
        wait_for(lambda: _renewals(store.redis) > before, timeout=9, what="a lease renewal")
        return Fetched("pokemon", "slow", {"v": 1}, now())

    fetch_once(store, "pokemon", "slow", long_fetch, task_id="s", max_age=0, lock_seconds=3.0)
    assert _renewals(store.redis) > before


def test_a_dead_holders_lease_runs_out_and_the_next_job_fetches(redis_url: str) -> None:
    """A lease nobody renews (its holder died) expires; a waiter is told how long it has
    left, and a job after it fetches."""
    store = make_store(redis_url)
    lock_key = store.keys.lock("pokemon", "mew")
    store.redis.set(lock_key, "dead-holder", px=1500)
    with pytest.raises(SingleFlightBusy) as busy:
        fetch_once(
            store, "pokemon", "mew", lambda _: Fetched("pokemon", "mew", {}, now()),
            task_id="w", max_age=0, lock_seconds=4, wait_seconds=0.1,
        )  # fmt: skip
    assert 0 < busy.value.retry_after <= 1.5
    wait_for(lambda: not store.redis.exists(lock_key), timeout=5, what="the dead lease to lapse")
    value = fetch_once(
        store, "pokemon", "mew", lambda _: Fetched("pokemon", "mew", {"v": 2}, now()),
        task_id="n", max_age=0, lock_seconds=4,
    )  # fmt: skip
    assert value == {"v": 2}


def test_a_deferred_waiter_accepts_the_result_stored_since_it_first_ran(redis_url: str) -> None:
    """With freshness off, a job coming back from a deferral takes the holder's result
    instead of fetching again: what counts is when the job first ran."""
    store = make_store(redis_url)
    began = now()
    store.write(Fetched("pokemon", "mew", {"v": "holder"}, began + 0.01), "holder")

    def fetch(_: object) -> Fetched:
        raise AssertionError("must not fetch: the holder's result is newer than the job")

    token = job_began_at.set(JobStart(began))
    try:
        value = fetch_once(store, "pokemon", "mew", fetch, task_id="w", max_age=0, lock_seconds=4)
    finally:
        job_began_at.reset(token)
    assert value == {"v": "holder"}
