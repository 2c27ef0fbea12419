"""Change events are at least once: a job that dies between its write and its event
leaves the event owed in the result's metadata, and whoever finds it next sends it.

Each scenario runs on a private single Redis and on the private Redis Cluster (three
masters, three replicas, 16 event partitions). "Dies" is the event's round trip
raising once, after the write's script has run: the job fails there, as a worker
killed between the two round trips would leave it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from click.testing import CliRunner

from apis import PokeAPI
from apis.config import ApiSettings
from ops.cli import cli
from settings import WorkerSettings
from tasks import pokemon
from tasks.catalog import refresh_batch
from tasks.runtime import Runtime
from tasks.store import Fetched, Freshness, ResultStore, Unchanged, now
from tests.support.redis_cluster import PrivateCluster

NAMES = ["charizard", "pikachu", "mew"]


class WorkerDied(Exception):
    """The fault: the worker is gone after the write's round trip, before the event's."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    private = PrivateCluster().start()
    try:
        yield private
    finally:
        private.cleanup()


@pytest.fixture(params=["redis", "cluster"])
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """The worker's runtime on a clean single Redis, or on the clean cluster."""
    if request.param == "cluster":
        cluster: PrivateCluster = request.getfixturevalue("cluster")
        cluster.flush()
        settings = WorkerSettings(redis_cluster_nodes=cluster.addresses, events_partitions=16)
        built = Runtime.build(settings)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("own_redis"))
        client.flushall()
        built = Runtime.build(WorkerSettings(), client)
    yield built
    built.store.redis.close()


@pytest.fixture
def client(sandbox: Any) -> PokeAPI:
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_attempts=1)
    return PokeAPI(PokeAPI.configure(settings))


def dies_before_its_events(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's next event round trip raises instead of being sent; later ones run."""

    def die(*_: Any) -> int:
        monkeypatch.undo()
        raise WorkerDied

    monkeypatch.setattr(store, "_emit", die)


def events(store: ResultStore) -> list[dict[str, str]]:
    """Every partition's events, read as a reader does, one stream at a time."""
    found: list[dict[str, str]] = []
    for stream in store.keys.all_events:
        for _, fields in cast(list[Any], store.redis.xrange(stream)):
            found.append({_text(k): _text(v) for k, v in fields.items()})
    return found


def owed(store: ResultStore, name: str) -> str | None:
    flags = store.redis.hget(store.keys.meta("pokemon", name), "event_owed")
    return None if flags is None else _text(flags)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("replica_wait_ms", [2000, 0])
def test_a_write_whose_event_is_appended_owes_nothing(
    runtime: Runtime, replica_wait_ms: int
) -> None:
    """The mark set with the value is cleared by the event's step: in the event's own
    script on one Redis; on the cluster in each master's WAIT round trip, or, without
    the wait, in a round trip of its own. A batch's, a revalidation's and a removal's
    too."""
    store = ResultStore(
        runtime.store.redis,
        runtime.store.keys,
        events_maxlen=1000,
        failures_maxlen=1000,
        replica_wait_ms=replica_wait_ms,
    )
    store.write(Fetched("pokemon", "mew", {"v": 1}, now(), etag='"a"'), "t1")
    store.write_many([Fetched("pokemon", n, {"n": n}, now()) for n in NAMES], "batch")
    store.revalidate(Unchanged("pokemon", "mew", now(), '"a"'), "t2")
    store.write(Fetched("article", "old", {"slug": "old"}, now()), "t3")
    store.remove("article", ["old"], tombstone_seconds=60)
    assert [owed(store, name) for name in ["mew", *NAMES]] == [None] * 4
    assert store.redis.hget(store.keys.meta("article", "old"), "event_owed") is None
    assert len(events(store)) == 1 + len(NAMES) + 1 + 2


def test_a_batch_run_again_sends_the_events_its_first_run_never_did(
    runtime: Runtime, client: PokeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog batch stores three names and dies before their events; run again, it
    finds all three fresh (no upstream call) and sends each missing event, once."""
    store = runtime.store
    dies_before_its_events(store, monkeypatch)
    with pytest.raises(WorkerDied):
        refresh_batch(NAMES, "batch-1", runtime=runtime, client=client, concurrency=3, defer=print)
    assert events(store) == []
    again = refresh_batch(
        NAMES, "batch-1", runtime=runtime, client=client, concurrency=3, defer=print
    )
    assert sorted(again.fresh) == sorted(NAMES)
    seen = events(store)
    assert sorted(e["key"] for e in seen) == sorted(f"pokemon:{n}" for n in NAMES)
    assert {(e["task_id"], e["changed"], e["revalidated"], e["fence"]) for e in seen} == {
        ("batch-1", "1", "0", "1")
    }
    assert {owed(store, name) for name in NAMES} == {None}
    refresh_batch(NAMES, "batch-1", runtime=runtime, client=client, concurrency=3, defer=print)
    assert len(events(store)) == len(NAMES)  # paid once: a third run sends nothing


def test_another_job_that_finds_an_unpaid_write_fresh_sends_its_event(
    runtime: Runtime, client: PokeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch_pokemon stores charizard and dies before its event; a second job for the
    same name, served from Redis, sends the event its writer owed; a third sends none."""
    store = runtime.store
    dies_before_its_events(store, monkeypatch)
    with pytest.raises(WorkerDied):
        pokemon.fetch_and_store("charizard", "job-1", runtime=runtime, client=client)
    assert events(store) == []
    pokemon.fetch_and_store("charizard", "job-2", runtime=runtime, client=client)
    pokemon.fetch_and_store("charizard", "job-3", runtime=runtime, client=client)
    (event,) = events(store)
    assert (event["key"], event["task_id"], event["changed"]) == ("pokemon:charizard", "job-1", "1")
    assert owed(store, "charizard") is None


def test_a_job_that_fetches_again_pays_the_debt_before_its_fetch(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write dies before its event; a job past the freshness window claims the fetch:
    the owed event is sent with the claim, so a fetch that then fails (and writes
    nothing) leaves no change without its event."""
    store = runtime.store
    dies_before_its_events(store, monkeypatch)
    with pytest.raises(WorkerDied):
        store.write(Fetched("pokemon", "mew", {"v": 1}, now()), "t1")
    later = now() + 3600  # the job began an hour after the write: nothing is fresh
    claim = store.claim("pokemon", "mew", started=later, freshness=Freshness(60), token="x", ttl=5)
    assert claim.state == "owner"
    (event,) = events(store)
    assert (event["task_id"], event["changed"]) == ("t1", "1")
    assert owed(store, "mew") is None


def test_the_next_write_over_an_unpaid_change_still_says_changed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write changes the value and dies before its event; the next one stores the same
    value: its event stands for both and says `changed=1`, so a reader that follows
    only changes misses none."""
    store = runtime.store
    store.write(Fetched("pokemon", "mew", {"v": 1}, now()), "t1")
    dies_before_its_events(store, monkeypatch)
    with pytest.raises(WorkerDied):
        store.write(Fetched("pokemon", "mew", {"v": 2}, now()), "t2")
    store.write(Fetched("pokemon", "mew", {"v": 2}, now()), "t3")
    assert [(e["task_id"], e["changed"]) for e in events(store)] == [("t1", "1"), ("t3", "1")]
    store.write(Fetched("pokemon", "mew", {"v": 2}, now()), "t4")
    assert events(store)[-1]["changed"] == "0"  # nothing owed, nothing changed


def test_a_removal_run_again_sends_the_removed_event_it_owed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An article removed (gone from the CMS) by a job that dies before the `removed=1`
    event: the job run again finds the value already gone and sends the event."""
    store = runtime.store
    store.write(Fetched("article", "old", {"slug": "old"}, now()), "t1")
    dies_before_its_events(store, monkeypatch)
    with pytest.raises(WorkerDied):
        store.remove("article", ["old"], tombstone_seconds=60)
    assert store.remove("article", ["old"], tombstone_seconds=60) == 0  # removed before
    removals = [e for e in events(store) if e.get("removed") == "1"]
    tombstone = _text(store.redis.hget(store.keys.meta("article", "old"), "fence"))
    assert [(e["key"], e["fence"]) for e in removals] == [("article:old", tombstone)]
    assert store.remove("article", ["old"], tombstone_seconds=60) == 0
    assert len(events(store)) == 2


def test_the_sweep_sends_what_no_job_asked_for_again(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Two writes die before their events and nobody asks for those results again:
    `apiworker send-owed-events` counts them (--dry-run), sends both, and a second run
    finds nothing owed."""
    store = runtime.store
    store.write(Fetched("pokemon", "paid", {"v": 0}, now()), "t0")
    for name in ("a", "b"):
        dies_before_its_events(store, monkeypatch)
        with pytest.raises(WorkerDied):
            store.write(Fetched("pokemon", name, {"v": name}, now()), f"t-{name}")
    if "cluster" in request.node.callspec.id:
        cluster: PrivateCluster = request.getfixturevalue("cluster")
        env = {"REDIS_CLUSTER_NODES": cluster.setting, "EVENTS_PARTITIONS": "16"}
    else:
        env = {"REDIS_URL": request.getfixturevalue("own_redis")}

    def sweep(*args: str) -> dict[str, Any]:
        outcome = CliRunner().invoke(cli, ["send-owed-events", *args], env=env)
        assert outcome.exit_code == 0, outcome.output
        answer: dict[str, Any] = json.loads(outcome.stdout)
        return answer

    assert sweep("--dry-run") == {"dry_run": True, "owed": 2}
    assert sweep() == {"dry_run": False, "owed": 2, "appended": 2}
    assert sorted(e["task_id"] for e in events(store)) == ["t-a", "t-b", "t0"]
    assert sweep() == {"dry_run": False, "owed": 0, "appended": 0}
