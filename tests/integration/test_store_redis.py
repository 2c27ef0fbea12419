"""The results store on a real Redis: concurrent late writers, and round trips counted.

Round trips are counted by the server (`INFO stats` total_reads_processed: one per batch
of commands a client sends, and `INFO commandstats`), on a Redis of this module alone so
no other client's commands are counted.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
import redis

from results.keys import Keys
from results.store import Fetched, Freshness, ResultStore, Unchanged, _packed

WRITERS, WRITES_EACH = 8, 40


@pytest.fixture
def client(own_redis: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(own_redis, decode_responses=True)
    connection.flushall()
    yield connection
    connection.close()


def make_store(client: redis.Redis) -> ResultStore:
    return ResultStore(client, Keys(), events_maxlen=100_000, failures_maxlen=1000)


def pokemon(name: str, fetched_at: float, weight: str = "1 kg") -> Fetched:
    value = {"id": 1, "name": name, "image": None, "height": "1 cm", "weight": weight}
    return Fetched("pokemon", name, value, fetched_at, etag='"e1"')


def round_trips(client: redis.Redis, action: object) -> tuple[int, dict[str, int]]:
    """Batches the server read while `action()` ran, and the commands it ran by name
    (those a script ran included: only `evalsha` and `script|*` are sent by clients)."""
    assert callable(action)
    client.config_resetstat()
    reads = client.info("stats")["total_reads_processed"]
    action()
    after = client.info("stats")["total_reads_processed"]
    commands = {
        name.removeprefix("cmdstat_"): stats["calls"]
        for name, stats in client.info("commandstats").items()
    }
    for own in ("info", "config|resetstat"):  # this function's own commands
        commands.pop(own, None)
    return after - reads - 1, commands  # minus the second INFO itself


def test_concurrent_writers_of_one_key_leave_the_newest_fetch_and_never_step_back(
    own_redis: str,
) -> None:
    """8 threads, each with its own connection, write one key with random fences (and
    fetch times that disagree with them): the highest fence stays, none steps back."""
    rng = random.Random(15)
    fences = rng.sample(range(1, 100_000), WRITERS * WRITES_EACH)
    batches = [fences[i::WRITERS] for i in range(WRITERS)]
    accepted: list[int] = []
    start = threading.Barrier(WRITERS)

    def writer(batch: list[int]) -> None:
        connection = redis.Redis.from_url(own_redis, decode_responses=True)
        store = make_store(connection)
        start.wait()
        for fence in batch:
            # A worker's clock says nothing: the fetch time runs against the fence.
            fetched = replace(pokemon("mew", 100 - fence / 1000, f"{fence} kg"), fence=fence)
            if store.write(fetched, f"t{fence}"):
                accepted.append(fence)
        connection.close()

    client = redis.Redis.from_url(own_redis, decode_responses=True)
    client.flushall()
    threads = [threading.Thread(target=writer, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    newest = max(fences)
    assert orjson.loads(client.get("pokemon:mew"))["weight"] == f"{newest} kg"
    assert client.hget("meta:{pokemon:mew}", "task_id") == f"t{newest}"
    # The stream's fences only grow, so no reader ever saw the value step back; each is
    # an accepted write's, and the last is the stored one's. (An accepted write overtaken
    # before its event was appended has none: the newer write's event stands for it.)
    events = [int(fields["fence"]) for _, fields in client.xrange("events:results")]
    assert events == sorted(set(events))
    assert set(events) <= set(accepted)
    assert events[-1] == newest
    # Not vacuous: the writers interleaved, so some writes were refused as too late.
    assert 1 < len(accepted) < len(fences)
    client.close()


def test_a_job_writes_its_result_and_its_event_in_one_round_trip(client: redis.Redis) -> None:
    """On one Redis: one EVALSHA for the result (the lock released in the same call) and
    one for its event, sent together; no SCRIPT EXISTS before them. (On a cluster the
    event is a second round trip: tests/integration/test_redis_cluster.py.)"""
    store = make_store(client)
    lock = store.keys.lock("pokemon", "mew")
    store.write(pokemon("mew", 1.0), "warm-up")  # loads the script once
    client.set(lock, "mine")
    trips, commands = round_trips(
        client, lambda: store.write(pokemon("mew", 2.0), "t", release=(lock, "mine"))
    )
    assert (trips, commands["evalsha"]) == (1, 2)
    assert not [name for name in commands if name.startswith("script")]
    assert client.get(lock) is None
    assert client.xlen("events:results") == 2
    assert client.hget("meta:{pokemon:mew}", "event_owed") is None


def test_a_revalidation_and_its_event_take_one_round_trip(client: redis.Redis) -> None:
    """A 304's revalidation pays its event in its own round trip, as a write does."""
    store = make_store(client)
    store.write(pokemon("mew", 1.0), "t1")
    store.revalidate(Unchanged("pokemon", "other", 1.5, etag='"e1"'), "warm-up")  # loads it
    trips, commands = round_trips(
        client, lambda: store.revalidate(Unchanged("pokemon", "mew", 2.0, etag='"e1"'), "t2")
    )
    assert (trips, commands["evalsha"]) == (1, 2)
    last = [fields for _, fields in client.xrange("events:results")][-1]
    assert (last["task_id"], last["revalidated"]) == ("t2", "1")
    assert client.hget("meta:{pokemon:mew}", "event_owed") is None


def test_write_many_writes_a_batch_in_one_round_trip_with_one_event_each(
    client: redis.Redis,
) -> None:
    """Five results: five EVALSHA for the results and five for their events, in one
    batch the server reads at once."""
    store = make_store(client)
    store.write(pokemon("warm-up", 1.0), "warm-up")  # loads the script once
    batch = [pokemon(name, 2.0) for name in ("a", "b", "c", "d", "e")]
    written: list[int] = []
    trips, commands = round_trips(client, lambda: written.append(store.write_many(batch, "b")))
    assert written == [5]
    assert (trips, commands["evalsha"]) == (1, 10)
    assert not [name for name in commands if name.startswith("script")]
    assert client.xlen("events:results") == 1 + 5


def test_write_many_loads_its_script_when_redis_lost_it(client: redis.Redis) -> None:
    """After a restart (or SCRIPT FLUSH) the batch still writes, each result once."""
    store = make_store(client)
    client.script_flush()
    assert store.write_many([pokemon("a", 1.0), pokemon("b", 1.0)], "b") == 2
    assert client.xlen("events:results") == 2


def test_an_event_is_paid_after_its_write_even_when_redis_had_not_loaded_the_write(
    client: redis.Redis,
) -> None:
    """The event's script rides behind the write's. A revalidation script Redis has not
    seen yet is refused (NOSCRIPT) while the event's, already loaded, runs and finds
    nothing owed; once the revalidation is loaded and sent again, its event is too."""
    store = make_store(client)
    store.write(pokemon("mew", 1.0), "t1")  # loads the write's and the event's scripts
    assert client.script_exists(store._revalidate.sha) == [False]
    (outcome,) = store.apply_many([Unchanged("pokemon", "mew", 2.0, etag='"e1"')], "t2")
    assert outcome == "revalidated"
    last = [fields for _, fields in client.xrange("events:results")][-1]
    assert (last["task_id"], last["revalidated"], last["changed"]) == ("t2", "1", "0")
    assert client.hget("meta:{pokemon:mew}", "event_owed") is None


def test_a_claim_that_finds_an_unpaid_write_fresh_sends_its_event_once(
    client: redis.Redis,
) -> None:
    """A value written whose event was not (its worker died between the two round
    trips): the metadata says the event is owed, and the next claims that find it fresh,
    whichever job makes them, send it once and clear the debt."""
    store = make_store(client)
    client.flushall()
    result = pokemon("mew", 1.0)
    store._run([(store._write, _packed(store._script_call(result, "job-1")[1]))])  # value only
    assert client.xlen("events:results") == 0
    assert client.hget("meta:{pokemon:mew}", "event_owed") == "10"
    for task_id in ("job-2", "job-1", "job-3"):
        claim = store.claim(
            "pokemon", "mew", started=None, freshness=Freshness(60), token=task_id, ttl=5
        )
        assert claim.state == "fresh"
    (event,) = [fields for _, fields in client.xrange("events:results")]
    assert (event["key"], event["task_id"], event["fence"]) == ("pokemon:mew", "job-1", "1")
    assert client.hget("meta:{pokemon:mew}", "event_owed") is None


def test_a_fresh_hit_on_a_paid_write_costs_one_round_trip(client: redis.Redis) -> None:
    """A write whose event was appended leaves nothing owed: a later fresh claim is its
    one script call, as before the outbox."""
    store = make_store(client)
    store.write(pokemon("mew", 1.0), "t")
    fresh = Freshness(60)
    store.claim("pokemon", "other", started=None, freshness=fresh, token="x", ttl=5)  # loads it
    assert client.hget("meta:{pokemon:mew}", "event_owed") is None
    trips, commands = round_trips(
        client,
        lambda: store.claim(
            "pokemon", "mew", started=None, freshness=Freshness(60), token="x", ttl=5
        ),
    )
    assert (trips, commands["evalsha"]) == (1, 1)
    assert "xadd" not in commands
