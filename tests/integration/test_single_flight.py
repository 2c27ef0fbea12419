"""Freshness and single flight against a real Redis, with real threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tasks.keys import Keys
from tasks.single_flight import fetch_once
from tasks.store import Fetched, ResultStore, now


def make_store(url: str) -> ResultStore:
    return ResultStore(redis.Redis.from_url(url), Keys(), events_maxlen=100, failures_maxlen=100)


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
        gate.wait(2)  # hold the lock while the others pile up
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
        )

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(job) for _ in range(20)]
        gate.set()
        values = [future.result(timeout=20) for future in futures]
    assert values == [{"name": "mew"}] * 20
    assert calls == 1


def test_a_result_older_than_the_job_is_refetched_when_freshness_is_off(redis_url: str) -> None:
    """max_age 0 never serves a result stored before the job began."""
    store = make_store(redis_url)
    store.write(Fetched("pokemon", "mew", {"v": 1}, now() - 5), "old")
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
