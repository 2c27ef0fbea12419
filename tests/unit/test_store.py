"""The results store: atomic value + metadata + event, and no late overwrite."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from apis.conditional import Validators
from ops.owed_events import send_owed
from results.keys import Keys
from results.store import GONE, Fetched, Freshness, ResultStore, Unchanged, _packed


@pytest.fixture
def store() -> ResultStore:
    client = fakeredis.FakeRedis(decode_responses=True)
    return ResultStore(client, Keys(), events_maxlen=1000, failures_maxlen=1000)


def pokemon(
    name: str, fetched_at: float, weight: str = "1 kg", alias: str | None = None, fence: int = 0
) -> Fetched:
    value = {"id": 1, "name": name, "image": None, "height": "1 cm", "weight": weight}
    return Fetched("pokemon", name, value, fetched_at, etag='"e1"', alias=alias, fence=fence)


def stored_ms(store: ResultStore, name: str) -> int:
    return int(store.redis.hget(f"meta:{{pokemon:{name}}}", "stored_ms"))


def test_a_write_stores_value_metadata_and_event(store: ResultStore) -> None:
    """Value, metadata hash and stream event appear together."""
    assert store.write(pokemon("mew", 1000.0, alias="151"), "task-1")
    redis = store.redis
    assert orjson.loads(redis.get("pokemon:mew"))["name"] == "mew"
    assert redis.hgetall("meta:{pokemon:mew}") == {
        "fetched_at_ms": "1000000",
        "stored_ms": str(stored_ms(store, "mew")),
        "fence": "1",
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
        "revalidated": "0",
        "fence": "1",
    }
    assert store.ident_for_alias("pokemon", "151") == "mew"


def test_an_older_result_written_later_is_refused(store: ResultStore) -> None:
    """A job with a lower fence (it began earlier) that writes later is refused, whatever
    its clock says (concurrent writers on a real Redis: tests/integration/)."""
    assert store.write(pokemon("mew", 1000.0, weight="2 kg", fence=2), "newer")
    assert not store.write(pokemon("mew", 9000.0, weight="1 kg", fence=1), "older")
    assert orjson.loads(store.redis.get("pokemon:mew"))["weight"] == "2 kg"
    assert store.redis.hget("meta:{pokemon:mew}", "task_id") == "newer"
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
        "svc:events:last-fence",
        "svc:events:results",
        "svc:fence:{svc:pokemon:mew}",
        "svc:index:pokemon-ids",
        "svc:meta:{svc:pokemon:mew}",
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
    store.write(pokemon("mew", 2000.0, fence=2), "newer")
    redis.set(lock, "mine")
    assert not store.write(pokemon("mew", 1000.0, fence=1), "older", release=(lock, "mine"))
    assert redis.get(lock) is None
    redis.set(lock, "someone-else")
    store.write(pokemon("mew", 3000.0, fence=3), "newest", release=(lock, "mine"))
    assert redis.get(lock) == "someone-else"


def unchanged(name: str, fetched_at: float, etag: str | None = '"e2"', fence: int = 0) -> Unchanged:
    return Unchanged("pokemon", name, fetched_at, etag=etag, max_age=60, fence=fence)


def test_a_revalidation_brings_the_metadata_forward_and_leaves_the_value(
    store: ResultStore,
) -> None:
    """Fetch time, task and the 304's validators move on; the event says revalidated."""
    store.write(pokemon("mew", 1000.0), "first")
    value = store.revalidate(unchanged("mew", 2000.0), "second")
    assert value["name"] == "mew"
    assert store.redis.hgetall("meta:{pokemon:mew}") == {
        "fetched_at_ms": "2000000",
        "stored_ms": str(stored_ms(store, "mew")),
        "fence": "2",
        "task_id": "second",
        "etag": '"e2"',
        "max_age": "60",
    }
    [_, (_, event)] = store.redis.xrange("events:results")
    assert event == {
        "key": "pokemon:mew",
        "kind": "pokemon",
        "id": "mew",
        "task_id": "second",
        "fetched_at_ms": "2000000",
        "changed": "0",
        "revalidated": "1",
        "fence": "2",
    }


def test_a_304_without_validators_keeps_the_stored_ones(store: ResultStore) -> None:
    """An answer that carried no ETag does not erase the one stored."""
    store.write(pokemon("mew", 1000.0), "first")
    store.revalidate(unchanged("mew", 2000.0, etag=None), "second")
    assert store.redis.hget("meta:{pokemon:mew}", "etag") == '"e1"'


def test_an_older_revalidation_never_moves_a_newer_result(store: ResultStore) -> None:
    """A late 304 of an earlier fetch leaves the newer result, its metadata and stream."""
    store.write(pokemon("mew", 2000.0, weight="2 kg", fence=2), "newer")
    value = store.revalidate(unchanged("mew", 1000.0, fence=1), "older")
    assert value["weight"] == "2 kg"
    assert store.redis.hget("meta:{pokemon:mew}", "task_id") == "newer"
    assert store.redis.xlen("events:results") == 1


def test_a_revalidation_of_a_vanished_value_says_gone(store: ResultStore) -> None:
    """Nothing to bring forward: the caller must fetch whole; nothing is written."""
    assert store.revalidate(unchanged("mew", 1000.0), "t") is GONE
    assert store.redis.exists("meta:{pokemon:mew}") == 0
    assert store.redis.xlen("events:results") == 0


def test_the_claim_hands_the_owner_the_stored_validators(store: ResultStore) -> None:
    """One round trip gives the lock and what a conditional fetch needs."""
    store.write(pokemon("mew", 1000.0), "first")
    later = stored_ms(store, "mew") / 1000 + 1
    claim = store.claim(
        "pokemon", "mew", started=later, freshness=Freshness(0.0), token="tok", ttl=10
    )
    assert (claim.state, claim.fence, claim.lock_value) == ("owner", 2, "tok|2")
    assert claim.validators == Validators(etag='"e1"')
    nothing = store.claim(
        "pokemon", "absent", started=later, freshness=Freshness(0.0), token="tok", ttl=10
    )
    assert (nothing.state, nothing.validators) == ("owner", None)


def test_the_upstream_lifetime_sets_the_window_only_when_followed(store: ResultStore) -> None:
    """max_age 60 in the meta: fresh for 60 s when followed (capped), else FRESHNESS_MAX_AGE."""
    store.write(
        Fetched("pokemon", "mew", {"name": "mew"}, 1000.0, etag='"e1"', max_age=60), "first"
    )
    stored = stored_ms(store, "mew") / 1000  # Redis's clock: the worker's is not asked

    def claim(freshness: Freshness, after: float) -> str:
        store.redis.delete("lock:{pokemon:mew}")
        answer = store.claim(
            "pokemon", "mew", started=stored + after, freshness=freshness, token="t", ttl=10
        )
        return answer.state

    assert claim(Freshness(0.0), 30) == "owner"
    assert claim(Freshness(0.0, upstream_cap=3600.0), 30) == "fresh"
    assert claim(Freshness(0.0, upstream_cap=3600.0), 70) == "owner"
    assert claim(Freshness(0.0, upstream_cap=20.0), 30) == "owner"
    assert Freshness(300.0, upstream_cap=20.0).window(None) == 300.0


def test_apply_many_mixes_writes_and_revalidations(store: ResultStore) -> None:
    """One pipeline: a write, a revalidation, a refused one and a vanished one."""
    store.write(pokemon("a", 1000.0, fence=1), "old")
    store.write(pokemon("b", 5000.0, fence=5), "newer")
    outcomes = store.apply_many(
        [pokemon("c", 2000.0), unchanged("a", 2000.0, fence=2), unchanged("b", 2000.0, fence=2),
         unchanged("gone", 2000.0)],
        "batch",
    )  # fmt: skip
    assert outcomes == ["written", "revalidated", "refused", "gone"]


def test_stored_many_gives_validators_only_where_the_value_exists(store: ResultStore) -> None:
    """A metadata hash without its value is not a stored result."""
    store.write(pokemon("a", 1000.0), "t")
    store.write(pokemon("b", 1000.0), "t")
    store.redis.delete("pokemon:b")
    found = store.stored_many("pokemon", ["a", "b", "c"])
    assert set(found) == {"a"}
    assert found["a"].validators == Validators(etag='"e1"')
    assert found["a"].stored_at == stored_ms(store, "a") / 1000


def test_the_sweep_finds_owed_events_under_a_prefix_and_skips_list_pages() -> None:
    """With RESULT_KEY_PREFIX the sweep still names each result from its metadata key;
    a list page's hash (also under `meta:{`) is no result and is left alone."""
    client = fakeredis.FakeRedis(decode_responses=True)
    store = ResultStore(client, Keys("app:"), events_maxlen=100, failures_maxlen=100)
    unsent = pokemon("mew", 1.0)
    store._run([(store._write, _packed(store._script_call(unsent, "t1")[1]))])  # value only
    client.hset(store.keys.page("article", "0:100"), mapping={"ids": "[]", "event_owed": "10"})
    assert send_owed(store, dry_run=True) == {"owed": 1}
    assert send_owed(store) == {"owed": 1, "appended": 1}
    [(_, event)] = client.xrange("app:events:results")
    assert (event["key"], event["task_id"]) == ("app:pokemon:mew", "t1")
    assert send_owed(store) == {"owed": 0, "appended": 0}


def test_an_event_paid_in_the_writes_round_trip_equals_one_built_by_the_writer() -> None:
    """One Redis pays a write's event from its metadata (`_PAY`); a cluster's path builds
    it from the writer's own fields (`_after`). A reader must not tell them apart: the
    same fields in the same order, for a write and for a revalidation."""

    def stream_after_both(cluster_path: bool) -> list[list[tuple[str, str]]]:
        client = fakeredis.FakeRedis(decode_responses=True)
        store = ResultStore(client, Keys(), events_maxlen=1000, failures_maxlen=1000)
        store._cluster = cluster_path  # the two-step path runs on one Redis as well
        store.write(pokemon("mew", 1000.0, alias="151"), "task-1")
        store.apply_many([unchanged("mew", 2000.0)], "task-2")
        assert client.hget("meta:{pokemon:mew}", "event_owed") is None
        return [list(fields.items()) for _, fields in client.xrange("events:results")]

    paid = stream_after_both(cluster_path=False)
    assert [dict(event)["revalidated"] for event in paid] == ["0", "1"]
    assert paid == stream_after_both(cluster_path=True)
