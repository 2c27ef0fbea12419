"""Results under stress, on a real Redis: a pause, skewed clocks, replayed scripts.

A Redis paused longer than the single-flight lease (`DEBUG SLEEP`) lets a second job
take a key whose first holder is still fetching; fences decide which result stays. A
worker whose clock is wrong decides nothing: order and freshness are Redis's. Scripts
sent twice (redis-py sends a command again after a lost reply) act once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from results import single_flight
from results import store as store_module
from results.keys import Keys
from results.replicas import ReplicaNotConfirmed
from results.single_flight import fetch_once
from results.store import Fetched, Freshness, ResultStore, Unchanged, now
from tasks.base import REDIS_TRANSIENT
from tests.support.celery_worker import wait_for
from tests.support.metrics import sample
from tests.support.redis_server import RedisServer

JOBS = 16
PAUSE_SECONDS = 7
LEASE_SECONDS = 4.0  # shorter than the pause: every lease lapses in it


@pytest.fixture(scope="module")
def debug_redis() -> Iterator[RedisServer]:
    """A Redis of this module alone that accepts `DEBUG SLEEP` from loopback."""
    server = RedisServer(args=("--enable-debug-command", "local")).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def store(debug_redis: RedisServer) -> Iterator[ResultStore]:
    client = redis.Redis.from_url(debug_redis.url, decode_responses=True)
    client.flushall()
    # Renewals as the worker sends them (results/runtime.py): short timeout, no retries.
    lease_client = redis.Redis.from_url(
        debug_redis.url, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    yield ResultStore(
        client, Keys(), events_maxlen=10_000, failures_maxlen=100, lease_client=lease_client
    )
    client.close()
    lease_client.close()


def leases_lost(reason: str) -> float:
    return sample("apiworker_single_flight_leases_lost_total", reason=reason)


def fence_of_holder(store: ResultStore, ident: str) -> int:
    """The fence of the lock's current holder (its value is `token|fence`)."""
    held = store.redis.get(store.keys.lock("pokemon", ident))
    assert held is not None
    return int(held.rsplit("|", 1)[1])


def test_a_redis_pause_lapses_leases_but_no_older_fence_overwrites_a_newer_result(
    store: ResultStore, debug_redis: RedisServer
) -> None:
    """16 fetches outlast a 7 s pause of Redis: every lease is lost (and counted), the
    keys are fetched again by later jobs, and the first holders' late writes, from
    clocks that even run ahead, are refused: each result is its last fence's fetch."""
    idents = [f"p{index}" for index in range(JOBS)]
    finish_first = threading.Event()
    started_first = threading.Semaphore(0)
    fences: dict[str, list[tuple[int, str]]] = {ident: [] for ident in idents}
    errors: list[BaseException] = []

    def first_fetch(ident: str) -> Fetched:
        fences[ident].append((fence_of_holder(store, ident), "first"))
        started_first.release()
        assert finish_first.wait(60), "the first fetches were never let go"
        # A late answer, on a clock 30 s ahead: neither may let it win.
        return Fetched("pokemon", ident, {"fetch": "first"}, now() + 30)

    def second_fetch(ident: str) -> Fetched:
        fences[ident].append((fence_of_holder(store, ident), "second"))
        return Fetched("pokemon", ident, {"fetch": "second"}, now())

    def job(ident: str, fetch: object) -> None:
        try:
            fetch_once(
                store, "pokemon", ident, lambda _: fetch(ident),  # type: ignore[operator]
                task_id=f"{ident}-{fetch.__name__}",  # type: ignore[attr-defined]
                max_age=0, lock_seconds=LEASE_SECONDS, wait_seconds=0,
            )  # fmt: skip
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    lost_before = leases_lost("expired") + leases_lost("taken")
    first = [threading.Thread(target=job, args=(i, first_fetch)) for i in idents]
    second = [threading.Thread(target=job, args=(i, second_fetch)) for i in idents]
    try:
        for thread in first:
            thread.start()
        for _ in idents:
            assert started_first.acquire(timeout=20), "a first fetch never began"
        pauser = redis.Redis.from_url(debug_redis.url, socket_timeout=PAUSE_SECONDS * 4)
        pauser.execute_command("DEBUG", "SLEEP", PAUSE_SECONDS)
        pauser.close()
        # Every holder's lease ran out in the pause, and its keeper says so.
        wait_for(
            lambda: leases_lost("expired") + leases_lost("taken") - lost_before >= JOBS,
            timeout=10,
            what="every lease counted as lost",
        )
        for thread in second:
            thread.start()
        for thread in second:
            thread.join(timeout=30)
    finally:
        finish_first.set()
        for thread in first:
            thread.join(timeout=30)
    assert not errors, errors
    assert leases_lost("expired") + leases_lost("taken") - lost_before == JOBS
    for ident in idents:
        (first_fence, _), (second_fence, _) = fences[ident]
        assert second_fence > first_fence
        assert orjson.loads(store.redis.get(f"pokemon:{ident}")) == {"fetch": "second"}
        assert int(store.redis.hget(f"meta:{{pokemon:{ident}}}", "fence")) == second_fence
    # No reader ever saw a result step back: per key, the stream's fences only rise,
    # and only the second fetch was written.
    events = [fields for _, fields in store.redis.xrange("events:results")]
    assert sorted((e["id"], int(e["fence"])) for e in events) == sorted(
        (ident, fences[ident][1][0]) for ident in idents
    )


def test_a_worker_30_s_fast_cannot_keep_a_newer_result_from_being_stored(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose clock runs 30 s ahead stores v1; a correct one, asked for a result
    no older than its job (FRESHNESS_MAX_AGE=0), fetches and stores v2: the stored
    times are Redis's, so v1 does not look 30 s newer than it is."""
    real_now = store_module.now
    monkeypatch.setattr(single_flight, "now", lambda: real_now() + 30)
    fetch_once(
        store, "pokemon", "mew",
        lambda _: Fetched("pokemon", "mew", {"v": 1}, single_flight.now()),
        task_id="fast", max_age=0, lock_seconds=LEASE_SECONDS,
    )  # fmt: skip
    monkeypatch.setattr(single_flight, "now", real_now)
    written = int(store.redis.hget("meta:{pokemon:mew}", "stored_ms"))
    wait_for(lambda: redis_ms(store) > written, timeout=1, interval=0.0005)
    value = fetch_once(
        store, "pokemon", "mew",
        lambda _: Fetched("pokemon", "mew", {"v": 2}, single_flight.now()),
        task_id="correct", max_age=0, lock_seconds=LEASE_SECONDS,
    )  # fmt: skip
    assert value == {"v": 2}
    assert orjson.loads(store.redis.get("pokemon:mew")) == {"v": 2}


def test_a_waiter_takes_the_result_of_a_holder_whose_clock_runs_2_s_slow(
    store: ResultStore,
) -> None:
    """FRESHNESS_MAX_AGE=0: a job that waited for the holder's fetch takes its result,
    though the holder's clock puts the fetch 2 s before the waiter began."""
    calls: list[str] = []
    holding = threading.Event()
    finish = threading.Event()

    def slow_holder(_: object) -> Fetched:
        calls.append("holder")
        holding.set()
        assert finish.wait(10)
        return Fetched("pokemon", "mew", {"v": "holder"}, now() - 2)

    def waiter_fetch(_: object) -> Fetched:
        calls.append("waiter")
        return Fetched("pokemon", "mew", {"v": "waiter"}, now())

    holder = threading.Thread(
        target=fetch_once,
        args=(store, "pokemon", "mew", slow_holder),
        kwargs={"task_id": "holder", "max_age": 0, "lock_seconds": LEASE_SECONDS},
    )
    holder.start()
    assert holding.wait(10)
    answer: list[object] = []
    waiter = threading.Thread(
        target=lambda: answer.append(
            fetch_once(
                store,
                "pokemon",
                "mew",
                waiter_fetch,
                task_id="waiter",
                max_age=0,
                lock_seconds=LEASE_SECONDS,
                wait_seconds=10,
            )
        )
    )
    waits_before = single_flight_waits()
    waiter.start()
    # The holder finishes only once the waiter has claimed and found it holding: a holder
    # done before the waiter's first claim is rightly not fresh for a job begun later.
    wait_for(lambda: single_flight_waits() > waits_before, timeout=10, what="the waiter")
    finish.set()
    holder.join(timeout=10)
    waiter.join(timeout=15)
    assert answer == [{"v": "holder"}]
    assert calls == ["holder"]


def single_flight_waits() -> float:
    return sample("apiworker_single_flight_waits_total", kind="pokemon")


def redis_ms(store: ResultStore) -> int:
    seconds, micros = store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_a_replayed_claim_finds_its_own_token_and_fence(store: ResultStore) -> None:
    """The same claim twice (a reply lost, the command sent again): the owner both times,
    with the same fence, instead of waiting on its own lock."""
    claim = {"started": None, "freshness": Freshness(0), "token": "tok", "ttl": 10.0}
    first = store.claim("pokemon", "mew", **claim)  # type: ignore[arg-type]
    again = store.claim("pokemon", "mew", **claim)  # type: ignore[arg-type]
    assert (first.state, again.state) == ("owner", "owner")
    assert again.fence == first.fence
    assert again.lock_value == first.lock_value == f"tok|{first.fence}"
    other = store.claim("pokemon", "mew", **{**claim, "token": "other"})  # type: ignore[arg-type]
    assert other.state == "wait"


def test_a_replayed_write_changes_nothing_and_adds_no_event(store: ResultStore) -> None:
    """The same write twice (same fence, same task): one event, the same metadata, and
    both calls say "written"; a replayed revalidation likewise."""
    result = Fetched("pokemon", "mew", {"v": 1}, now(), etag='"e1"', fence=3)
    assert store.write(result, "job-1")
    meta = store.redis.hgetall("meta:{pokemon:mew}")
    assert store.write(result, "job-1")
    assert store.redis.hgetall("meta:{pokemon:mew}") == meta
    assert store.redis.xlen("events:results") == 1
    unchanged = Unchanged("pokemon", "mew", now(), etag='"e2"', fence=4)
    assert store.revalidate(unchanged, "job-2") == {"v": 1}
    meta = store.redis.hgetall("meta:{pokemon:mew}")
    assert store.revalidate(unchanged, "job-2") == {"v": 1}
    assert store.redis.hgetall("meta:{pokemon:mew}") == meta
    assert store.redis.xlen("events:results") == 2
    # Another job's write under the stored fence is no replay: it is refused.
    assert not store.write(replace(result, value={"v": 9}), "job-3")  # fence 3 < 4


def test_the_gone_path_keeps_the_lock_until_its_whole_fetch_is_written(
    store: ResultStore,
) -> None:
    """A 304 whose stored value vanished meanwhile: the holder fetches it whole with
    the lock still held, so a job arriving then waits instead of fetching too."""
    store.write(Fetched("pokemon", "mew", {"v": 1}, now(), etag='"e1"'), "first")
    written = int(store.redis.hget("meta:{pokemon:mew}", "stored_ms"))
    wait_for(lambda: redis_ms(store) > written, timeout=1, interval=0.0005)
    calls: list[str] = []
    seen_by_other: list[str] = []

    def fetch(validators: object) -> Fetched | Unchanged:
        if validators is not None:
            calls.append("conditional")
            store.redis.delete("pokemon:mew")  # evicted, or deleted, since the claim
            return Unchanged("pokemon", "mew", now(), etag='"e1"')
        calls.append("whole")
        other = store.claim(
            "pokemon", "mew", started=None, freshness=Freshness(0), token="other", ttl=10
        )
        seen_by_other.append(other.state)
        return Fetched("pokemon", "mew", {"v": 2}, now(), etag='"e2"')

    value = fetch_once(
        store, "pokemon", "mew", fetch, task_id="holder", max_age=0, lock_seconds=LEASE_SECONDS
    )
    assert value == {"v": 2}
    assert calls == ["conditional", "whole"]
    assert seen_by_other == ["wait"]
    assert store.redis.get("lock:{pokemon:mew}") is None  # released by the whole write


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and one replica following it."""
    master, replica = RedisServer().start(), RedisServer().start()
    try:
        follower = replica.client()
        follower.replicaof("127.0.0.1", master.port)
        wait_for(
            lambda: follower.info("replication").get("master_link_status") == "up",
            timeout=10,
            what="the replica in sync",
        )
        follower.close()
        yield master, replica
    finally:
        replica.cleanup()
        master.cleanup()


def commands_run(client: redis.Redis, action: object) -> dict[str, int]:
    assert callable(action)
    client.config_resetstat()
    action()
    return {
        name.removeprefix("cmdstat_"): stats["calls"]
        for name, stats in client.info("commandstats").items()
    }


def test_a_write_waits_for_a_replica_and_is_retried_when_none_answers(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    """With a replica, a WAIT goes in the event's round trip (after an INCR of the
    fence, so it counts this connection's writes); a replica that does not answer in
    time raises a transient Redis error, so the job is retried rather than
    acknowledged."""
    master, replica = replicated
    client = redis.Redis.from_url(master.url, decode_responses=True)
    store = ResultStore(client, Keys(), events_maxlen=100, failures_maxlen=100, replica_wait_ms=300)
    store.write(Fetched("pokemon", "mew", {"v": 0}, now()), "warm-up")  # loads the script
    result = Fetched("pokemon", "mew", {"v": 1}, now(), fence=10)
    ran = commands_run(client, lambda: store.write(result, "job-1"))
    assert (ran.get("evalsha"), ran.get("wait")) == (2, 1)
    assert issubclass(ReplicaNotConfirmed, REDIS_TRANSIENT)
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ReplicaNotConfirmed):
            store.write(replace(result, value={"v": 2}, fence=11), "job-2")
    finally:
        replica.process.send_signal(signal.SIGCONT)
    client.close()


def test_a_redis_without_replicas_pays_no_wait(store: ResultStore) -> None:
    """A single Redis: no WAIT is sent, with RESULT_REPLICA_WAIT_MS at its default."""
    single = ResultStore(
        store.redis, Keys(), events_maxlen=100, failures_maxlen=100, replica_wait_ms=1000
    )
    single.write(Fetched("pokemon", "mew", {"v": 0}, now()), "warm-up")  # asks INFO once
    ran = commands_run(
        store.redis, lambda: single.write(Fetched("pokemon", "mew", {"v": 1}, now()), "job")
    )
    assert "wait" not in ran
    assert ran.get("evalsha") == 2


def test_a_renewal_that_finds_another_holder_loses_the_lease_and_says_so(
    store: ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease taken over while its holder fetches (it expired, another job claimed):
    the next renewal answers 0, and the lease is dropped, logged and counted."""
    before = leases_lost("taken")
    other = threading.Event()

    def fetch(_: object) -> Fetched:
        # Another holder's lock now: as if this lease had lapsed and been taken.
        store.redis.set("lock:{pokemon:mew}", "other|99", px=10_000)
        wait_for(lambda: leases_lost("taken") > before, timeout=5, what="the loss counted")
        other.set()
        return Fetched("pokemon", "mew", {"v": "late"}, now())

    fetch_once(store, "pokemon", "mew", fetch, task_id="t", max_age=0, lock_seconds=0.6)
    assert other.is_set()
    assert leases_lost("taken") - before == 1
    assert "single-flight lease lost key=lock:{pokemon:mew} reason=taken" in caplog.text
    assert store.redis.get("lock:{pokemon:mew}") == "other|99"  # not released by us
