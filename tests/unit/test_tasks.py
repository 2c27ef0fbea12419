"""Tasks as plain functions: fakeredis for the store, the sandbox upstream on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest

import worker
from apis import PokeAPI
from apis.config import ApiSettings
from tasks import pokemon
from tasks.catalog import refresh_batch
from tasks.errors import InvalidInput
from tasks.runtime import Runtime, set_runtime
from worker.settings import WorkerSettings

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
def client(sandbox: Any) -> PokeAPI:
    settings = ApiSettings(pokeapi_base_url=sandbox.pokeapi_url, http_retry_attempts=1)
    return PokeAPI(PokeAPI.configure(settings))


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


def test_fetch_and_store_writes_the_reference_result(runtime, client, sandbox) -> None:
    """charizard is stored exactly, with its metadata."""
    value = pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    stored = runtime.store.redis.get("pokemon:charizard")
    assert orjson.loads(stored) == value
    assert value["weight"] == "90.5 kg"
    assert runtime.store.redis.hget("meta:pokemon:charizard", "task_id") == b"t1"


def test_an_id_is_stored_under_the_canonical_name_and_remembered(runtime, client, sandbox) -> None:
    """`6` lands at pokemon:charizard; the next `6` job is served from Redis."""
    pokemon.fetch_and_store("6", "t1", runtime=runtime, client=client)
    assert runtime.store.pokemon_name_for_id("6") == "charizard"
    pokemon.fetch_and_store("6", "t2", runtime=runtime, client=client)
    assert sandbox.calls("pokemon") == 1


def test_a_fresh_result_costs_no_upstream_call(runtime, client, sandbox) -> None:
    """Within FRESHNESS_MAX_AGE the stored value is returned."""
    first = pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    second = pokemon.fetch_and_store("charizard", "t2", runtime=runtime, client=client)
    assert first == second
    assert sandbox.calls("pokemon") == 1


@pytest.mark.parametrize("bad", ["", "Pika Chu", "../x", "a" * 101, None, 1.5, ["x"], "-x", "0"])
def test_invalid_input_fails_before_any_call(runtime, sandbox, bad) -> None:
    """The task refuses bad arguments with InvalidInput and records the failure."""
    outcome = pokemon.fetch_pokemon.apply(args=[bad])
    assert outcome.state == "FAILURE"
    assert isinstance(outcome.result, InvalidInput)
    assert sandbox.calls() == 0
    [(_, record)] = runtime.store.redis.xrange("events:failures")
    assert record[b"error"] == b"InvalidInput"


def test_a_batch_stores_records_and_defers_per_name(runtime, client, sandbox) -> None:
    """Stored, permanent failure recorded per name, transient one handed to a single job."""
    sandbox.inject("pokemon", "status", status=503)  # the first request: mew's
    deferred: list[str] = []
    outcome = refresh_batch(
        ["mew", "missingno", "charizard"],  # one at a time, in this order
        "batch-1",
        runtime=runtime,
        client=client,
        concurrency=1,
        defer=deferred.append,
    )
    assert outcome.summary() == {"stored": 1, "fresh": 0, "failed": 1, "deferred": 1}
    assert deferred == ["mew"]
    assert orjson.loads(runtime.store.redis.get("pokemon:charizard"))["id"] == 6
    [(_, record)] = runtime.store.redis.xrange("events:failures")
    assert record[b"task"] == b"tasks.pokemon.fetch_pokemon"
    assert record[b"args"] == b'["missingno"]'
    assert record[b"error"] == b"NotFound"


def test_a_batch_skips_fresh_names(runtime, client, sandbox) -> None:
    """Names with a fresh result cost no upstream call."""
    pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    outcome = refresh_batch(
        ["charizard"], "b", runtime=runtime, client=client, concurrency=2, defer=print
    )
    assert outcome.fresh == ["charizard"]
    assert sandbox.calls("pokemon") == 1


def test_a_huge_argument_is_shortened_in_its_failure_record(runtime, sandbox) -> None:
    """A 1 MB argument costs a failure record about 1 KB, marked truncated."""
    pokemon.fetch_pokemon.apply(args=["a" * 1_000_000])
    [(_, record)] = runtime.store.redis.xrange("events:failures")
    assert record[b"truncated"] == b"1"
    assert len(record[b"args"]) < 2048
    assert record[b"error"] == b"InvalidInput"
