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
    names = {name for name in worker.app.tasks if name.startswith("tasks.")}
    assert names == PUBLIC_TASKS


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
