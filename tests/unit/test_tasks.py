"""Tasks as plain functions: fakeredis for the store, `responses` for the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import orjson
import pytest
import responses

import worker
from apis import PokeAPI
from apis.config import ApiSettings
from tasks import pokemon
from tasks.catalog import refresh_batch
from tasks.errors import InvalidInput
from tasks.runtime import Runtime, set_runtime
from worker.settings import WorkerSettings

BASE = "http://pokeapi.test/api/v2"
CHARIZARD = (Path(__file__).parents[2] / "sandbox" / "data" / "pokemon" / "6.json").read_bytes()
PUBLIC_TASKS = {
    "tasks.pokemon.fetch_pokemon",
    "tasks.pokemon.refresh_catalog",
    "tasks.cms.sync_article",
    "tasks.cms.sync_articles",
    "tasks.semaphore.sync_pipelines",
    "tasks.semaphore.sync_all_projects",
}


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    built = Runtime.build(WorkerSettings(), fakeredis.FakeRedis())
    set_runtime(built)
    yield built
    set_runtime(None)


@pytest.fixture
def client() -> PokeAPI:
    return PokeAPI(PokeAPI.configure(ApiSettings(pokeapi_base_url=BASE, http_retry_attempts=1)))


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for ref in ("charizard", "6"):
            mock.get(f"{BASE}/pokemon/{ref}", body=CHARIZARD, content_type="application/json")
        yield mock


def test_the_app_registers_exactly_the_public_task_names() -> None:
    """Refactors cannot rename the contract."""
    worker.app.loader.import_default_modules()
    tasks = worker.app.tasks
    public = {
        n for n in tasks if n.startswith("tasks.") and not getattr(tasks[n], "internal", False)
    }
    internal = {n for n in tasks if getattr(tasks[n], "internal", False)}
    assert public == PUBLIC_TASKS
    assert internal == {"tasks.pokemon.fetch_pokemon_batch"}


def test_fetch_and_store_writes_the_reference_result(runtime, client, upstream) -> None:
    """charizard is stored exactly, with its metadata."""
    value = pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    stored = runtime.store.redis.get("pokemon:charizard")
    assert orjson.loads(stored) == value
    assert value["weight"] == "90.5 kg"
    assert runtime.store.redis.hget("meta:pokemon:charizard", "task_id") == b"t1"


def test_an_id_is_stored_under_the_canonical_name_and_remembered(runtime, client, upstream) -> None:
    """`6` lands at pokemon:charizard; the next `6` job is served from Redis."""
    pokemon.fetch_and_store("6", "t1", runtime=runtime, client=client)
    assert runtime.store.pokemon_name_for_id("6") == "charizard"
    pokemon.fetch_and_store("6", "t2", runtime=runtime, client=client)
    assert len(upstream.calls) == 1


def test_a_fresh_result_costs_no_upstream_call(runtime, client, upstream) -> None:
    """Within FRESHNESS_MAX_AGE the stored value is returned."""
    first = pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    second = pokemon.fetch_and_store("charizard", "t2", runtime=runtime, client=client)
    assert first == second
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("bad", ["", "Pika Chu", "../x", "a" * 101, None, 1.5, ["x"], "-x", "0"])
def test_invalid_input_fails_before_any_call(runtime, upstream, bad) -> None:
    """The task refuses bad arguments with InvalidInput and records the failure."""
    outcome = pokemon.fetch_pokemon.apply(args=[bad])
    assert outcome.state == "FAILURE"
    assert isinstance(outcome.result, InvalidInput)
    assert len(upstream.calls) == 0
    [(_, record)] = runtime.store.redis.xrange("events:failures")
    assert record[b"error"] == b"InvalidInput"


def test_a_batch_stores_records_and_defers_per_name(runtime, client, upstream) -> None:
    """Stored, permanent failure recorded per name, transient one handed to a single job."""
    upstream.get(f"{BASE}/pokemon/missingno", status=404)
    upstream.get(f"{BASE}/pokemon/mew", status=503)
    deferred: list[str] = []
    outcome = refresh_batch(
        ["charizard", "missingno", "mew"],
        "batch-1",
        runtime=runtime,
        client=client,
        concurrency=3,
        defer=deferred.append,
    )
    assert outcome.summary() == {"stored": 1, "fresh": 0, "failed": 1, "deferred": 1}
    assert deferred == ["mew"]
    assert orjson.loads(runtime.store.redis.get("pokemon:charizard"))["id"] == 6
    [(_, record)] = runtime.store.redis.xrange("events:failures")
    assert record[b"task"] == b"tasks.pokemon.fetch_pokemon"
    assert record[b"args"] == b'["missingno"]'
    assert record[b"error"] == b"NotFound"


def test_a_batch_skips_fresh_names(runtime, client, upstream) -> None:
    """Names with a fresh result cost no upstream call."""
    pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    outcome = refresh_batch(
        ["charizard"], "b", runtime=runtime, client=client, concurrency=2, defer=print
    )
    assert outcome.fresh == ["charizard"]
    assert len(upstream.calls) == 1


def test_a_huge_argument_is_shortened_in_its_failure_record(runtime, upstream) -> None:
    """A 1 MB argument costs a failure record about 1 KB, marked truncated."""
    pokemon.fetch_pokemon.apply(args=["a" * 1_000_000])
    [(_, record)] = runtime.store.redis.xrange("events:failures")
    assert record[b"truncated"] == b"1"
    assert len(record[b"args"]) < 2048
    assert record[b"error"] == b"InvalidInput"
