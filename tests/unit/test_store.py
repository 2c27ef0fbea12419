"""The results store: atomic value + metadata + event, and no late overwrite."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from tasks.keys import Keys
from tasks.store import Fetched, ResultStore


@pytest.fixture
def store() -> ResultStore:
    client = fakeredis.FakeRedis(decode_responses=True)
    return ResultStore(client, Keys(), events_maxlen=1000, failures_maxlen=1000)


def pokemon(
    name: str, fetched_at: float, weight: str = "1 kg", alias: str | None = None
) -> Fetched:
    value = {"id": 1, "name": name, "image": None, "height": "1 cm", "weight": weight}
    return Fetched("pokemon", name, value, fetched_at, etag='"e1"', alias=alias)


def test_a_write_stores_value_metadata_and_event(store: ResultStore) -> None:
    """Value, metadata hash and stream event appear together."""
    assert store.write(pokemon("mew", 1000.0, alias="151"), "task-1")
    redis = store.redis
    assert orjson.loads(redis.get("pokemon:mew"))["name"] == "mew"
    assert redis.hgetall("meta:pokemon:mew") == {
        "fetched_at_ms": "1000000",
        "task_id": "task-1",
        "etag": '"e1"',
    }
    [(_, event)] = redis.xrange("events:results")
    assert event == {
        "key": "pokemon:mew",
        "kind": "pokemon",
        "id": "mew",
        "task_id": "task-1",
        "fetched_at_ms": "1000000",
        "changed": "1",
    }
    assert store.pokemon_name_for_id("151") == "mew"


def test_an_older_result_written_later_is_refused(store: ResultStore) -> None:
    """A job that fetched earlier but writes later is refused (concurrent writers on a
    real Redis: tests/integration/test_store_redis.py)."""
    assert store.write(pokemon("mew", 2000.0, weight="2 kg"), "newer")
    assert not store.write(pokemon("mew", 1000.0, weight="1 kg"), "older")
    assert orjson.loads(store.redis.get("pokemon:mew"))["weight"] == "2 kg"
    assert store.redis.hget("meta:pokemon:mew", "task_id") == "newer"
    assert store.redis.xlen("events:results") == 1


def test_an_unchanged_value_is_marked_unchanged(store: ResultStore) -> None:
    """Consumers can skip events that changed nothing."""
    store.write(pokemon("mew", 1000.0), "a")
    store.write(pokemon("mew", 2000.0), "b")
    events = [fields for _, fields in store.redis.xrange("events:results")]
    assert [e["changed"] for e in events] == ["1", "0"]


def test_prefix_namespaces_every_key() -> None:
    """RESULT_KEY_PREFIX applies to values, metadata and streams."""
    client = fakeredis.FakeRedis(decode_responses=True)
    store = ResultStore(client, Keys("svc:"), events_maxlen=1000, failures_maxlen=1000)
    store.write(pokemon("mew", 1.0), "t")
    store.write(pokemon("mew", 1.0, alias="151"), "t")
    assert sorted(client.keys("*")) == [
        "svc:events:results",
        "svc:index:pokemon-ids",
        "svc:meta:pokemon:mew",
        "svc:pokemon:mew",
    ]


def test_read_fresh_respects_the_cutoff(store: ResultStore) -> None:
    """Only results fetched after the cutoff count as fresh."""
    store.write(pokemon("mew", 1000.0), "t")
    assert store.read_fresh("pokemon", "mew", newer_than=999.0)["name"] == "mew"
    assert store.read_fresh("pokemon", "mew", newer_than=1001.0) is None
    assert store.read_fresh("pokemon", "absent", newer_than=0) is None


def test_write_many_writes_every_result_with_its_event(store: ResultStore) -> None:
    """Each result of a batch is stored with one event (round trips: tests/integration)."""
    written = store.write_many([pokemon("a", 1.0), pokemon("b", 1.0)], "batch")
    assert written == 2
    assert store.redis.xlen("events:results") == 2


def test_a_write_gives_up_its_lock_even_when_refused(store: ResultStore) -> None:
    """The single-flight lock goes in the same call, and only when the token matches."""
    redis = store.redis
    lock = store.keys.lock("pokemon", "mew")
    store.write(pokemon("mew", 2000.0), "newer")
    redis.set(lock, "mine")
    assert not store.write(pokemon("mew", 1000.0), "older", release=(lock, "mine"))
    assert redis.get(lock) is None
    redis.set(lock, "someone-else")
    store.write(pokemon("mew", 3000.0), "newest", release=(lock, "mine"))
    assert redis.get(lock) == "someone-else"
