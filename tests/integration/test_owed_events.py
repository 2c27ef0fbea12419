"""Change events are at least once: a job that dies between its write and its event
leaves the event owed in the result's metadata, and whoever finds it next sends it.

Each scenario runs on a private single Redis and on the private Redis Cluster (three
masters, three replicas, 16 event partitions). "Dies" is the job failing after the
write's script has run and before its event's has: on the cluster the event's round trip
raises once, as a worker killed between the two round trips would leave it; on one Redis,
where both ride in one round trip, only the write's script is sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from celery import Celery
from click.testing import CliRunner

from apis import PokeAPI
from apis.config import ApiSettings
from ops.cli import cli
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from results.keys import Keys
from results.runtime import Runtime
from results.store import Fetched, Freshness, ResultStore, Unchanged, now
from settings import WorkerSettings
from tasks import pokemon
from tasks.pokemon_catalog import refresh_batch
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.metrics import sample
from tests.support.redis_cluster import PARTITIONS, PrivateCluster

NAMES = ["charizard", "pikachu", "mew"]
TIMEOUT = 30


class WorkerDied(Exception):
    """The fault: the worker is gone after the write's round trip, before the event's."""


@pytest.fixture(params=["redis", "cluster"])
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """The worker's runtime on a clean single Redis, or on the clean cluster."""
    if request.param == "cluster":
        cluster: PrivateCluster = request.getfixturevalue("cluster")
        cluster.flush()
        built = Runtime.build(cluster.worker_settings())
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
    """The store's next events are never sent; later ones are. On a cluster the events'
    round trip raises. On one Redis, where the events ride in the writes' own round trip,
    the writes' scripts are sent alone and the events' are not (a worker gone after
    sending only part of its batch)."""

    def die(*_: Any) -> int:
        monkeypatch.undo()
        raise WorkerDied

    def writes_alone(_: Any, calls: Any) -> list[str]:
        monkeypatch.undo()
        store._run(calls)
        raise WorkerDied

    monkeypatch.setattr(store, "_emit", die)
    monkeypatch.setattr(store, "_apply_and_pay", writes_alone)


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


def owed_sent() -> float:
    """`apiworker_owed_events_sent_total` for Pokémon, as this process counts it."""
    return sample("apiworker_owed_events_sent_total", kind="pokemon")


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
    before = owed_sent()
    again = refresh_batch(
        NAMES, "batch-1", runtime=runtime, client=client, concurrency=3, defer=print
    )
    assert owed_sent() - before == len(NAMES)
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
        env = cluster.environment()
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


def names_written_apart_from_their_events(cluster: PrivateCluster) -> tuple[list[str], int]:
    """Two catalog names whose values live on one master and whose event streams live
    on another, that one's port: pausing its writes stops a batch between the two."""
    keys = Keys("", PARTITIONS)
    index = json.loads((REPO_ROOT / "sandbox/data/pokemon-index.json").read_text())
    by_masters: dict[tuple[int, int], list[str]] = {}
    for entry in index["results"][:60]:
        name = entry["name"]
        value = cluster.master_of(keys.result("pokemon", name)).port
        stream = cluster.master_of(keys.events_for("pokemon", name)).port
        if value != stream:
            by_masters.setdefault((value, stream), []).append(name)
    (_, paused), names = max(by_masters.items(), key=lambda item: len(item[1]))
    return names[:2], paused


@pytest.mark.broker("redis")
def test_a_worker_killed_between_a_batch_write_and_its_events_leaves_them_owed(
    cluster: PrivateCluster, cluster_worker_env: dict[str, str]
) -> None:
    """A real worker on the cluster runs a catalog batch; the master of the names' event
    streams holds writes (CLIENT PAUSE WRITE), so the worker has stored the results and
    waits on their events when it is SIGKILLed. The broker hands the batch to a second
    worker, which finds both names fresh and sends the two events the dead one owed."""
    cluster.flush()
    names, paused_port = names_written_apart_from_their_events(cluster)
    env = cluster_worker_env
    producer: Celery = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    client = cluster.client()
    paused = redis.Redis(port=paused_port)
    keys = Keys("", PARTITIONS)
    first = WorkerProcess(env).start(producer)
    second = None
    try:
        paused.client_pause(30_000, all=False)
        producer.send_task("tasks.pokemon.fetch_pokemon_batch", args=[names])
        meta = [keys.meta("pokemon", name) for name in names]
        wait_for(
            lambda: all(client.hget(key, "event_owed") for key in meta),
            timeout=TIMEOUT,
            what="the batch's results stored, their events owed",
        )
        first.kill()
        paused.client_unpause()
        assert [client.xlen(keys.events_for("pokemon", n)) for n in names] == [0, 0]
        second = WorkerProcess(env).start(producer)

        def sent() -> list[str]:
            return sorted(
                _text(fields["key"])
                for name in set(names)
                for _, fields in cast(list[Any], client.xrange(keys.events_for("pokemon", name)))
            )

        wait_for(lambda: len(sent()) == len(names), timeout=TIMEOUT, what="the owed events")
        assert sent() == sorted(keys.result("pokemon", name) for name in names)
        assert [client.hget(key, "event_owed") for key in meta] == [None, None]
    finally:
        paused.client_unpause()
        paused.close()
        first.kill()
        if second is not None:
            second.stop()
        client.close()
        producer.close()
