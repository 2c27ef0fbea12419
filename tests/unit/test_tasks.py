"""Tasks as plain functions: fakeredis for the store, the sandbox upstream on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import orjson
import pytest

import worker
from apis import CmsAPI, PokeAPI
from apis.config import ApiSettings
from results.runtime import Runtime, set_runtime
from settings import WorkerSettings
from tasks import cms, pokemon
from tasks.errors import InvalidInput
from tasks.pokemon_catalog import refresh_batch
from tests.support.celery_worker import wait_for

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


def test_no_task_declares_a_celery_rate_limit_while_the_worker_ignores_them() -> None:
    """The worker skips Celery's per-task rate limits (the upstream budget
    paces calls instead): a task declaring one would be silently unlimited."""
    worker.app.loader.import_default_modules()
    assert worker.app.conf.worker_disable_rate_limits is True
    limited = {name for name, task in worker.app.tasks.items() if task.rate_limit}
    assert limited == set()


def test_fetch_and_store_writes_the_reference_result(runtime, client, sandbox) -> None:
    """charizard is stored exactly, with its metadata."""
    value = pokemon.fetch_and_store("charizard", "t1", runtime=runtime, client=client)
    stored = runtime.store.redis.get("pokemon:charizard")
    assert orjson.loads(stored) == value
    assert value["weight"] == "90.5 kg"
    assert runtime.store.redis.hget("meta:{pokemon:charizard}", "task_id") == b"t1"


def test_an_id_is_stored_under_the_canonical_name_and_remembered(runtime, client, sandbox) -> None:
    """`6` lands at pokemon:charizard; the next `6` job is served from Redis."""
    pokemon.fetch_and_store("6", "t1", runtime=runtime, client=client)
    assert runtime.store.ident_for_alias("pokemon", "6") == "charizard"
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
    assert outcome.summary() == {
        "stored": 1, "revalidated": 0, "fresh": 0, "failed": 1, "deferred": 1
    }  # fmt: skip
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


@pytest.fixture
def always_ask() -> Iterator[Runtime]:
    """A runtime with FRESHNESS_MAX_AGE=0: every job asks the upstream."""
    built = Runtime.build(WorkerSettings(freshness_max_age=0), fakeredis.FakeRedis())
    set_runtime(built)
    yield built
    set_runtime(None)


def a_later_job() -> None:
    """Wait for the next millisecond: a result stored in the millisecond a job began
    counts as fresh for it (`stored >= started`), so a job meant to ask the upstream
    again under FRESHNESS_MAX_AGE=0 must begin after the last write."""
    now_ms = int(time.time() * 1000)
    wait_for(lambda: int(time.time() * 1000) > now_ms, timeout=1, interval=0.0005)


def events(runtime: Runtime) -> list[dict[str, str]]:
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _, fields in runtime.store.redis.xrange("events:results")
    ]


def test_a_refresh_of_an_unchanged_record_is_a_304_that_moves_the_meta(
    always_ask, client, sandbox
) -> None:
    """Second fetch: conditional, 304, same value, fetched_at forward, revalidated=1."""
    first = pokemon.fetch_and_store("charizard", "t1", runtime=always_ask, client=client)
    fetched_before = int(always_ask.store.redis.hget("meta:{pokemon:charizard}", "fetched_at_ms"))
    a_later_job()
    again = pokemon.fetch_and_store("charizard", "t2", runtime=always_ask, client=client)
    assert again == first
    assert sandbox.not_modified("pokemon") == 1
    meta = always_ask.store.redis.hgetall("meta:{pokemon:charizard}")
    assert int(meta[b"fetched_at_ms"]) >= fetched_before
    assert meta[b"task_id"] == b"t2"
    assert meta[b"etag"]
    assert meta[b"last_modified"]
    assert [(e["changed"], e["revalidated"]) for e in events(always_ask)] == [
        ("1", "0"),
        ("0", "1"),
    ]


def test_a_refresh_of_a_changed_record_stores_the_new_value_and_etag(
    always_ask, client, sandbox
) -> None:
    """The upstream changed it: 200, new weight, new ETag, changed=1 revalidated=0."""
    first = pokemon.fetch_and_store("pikachu", "t1", runtime=always_ask, client=client)
    etag = always_ask.store.redis.hget("meta:{pokemon:pikachu}", "etag")
    sandbox.change_record("pokemon", "pikachu")
    a_later_job()
    again = pokemon.fetch_and_store("pikachu", "t2", runtime=always_ask, client=client)
    assert again["weight"] != first["weight"]
    assert always_ask.store.redis.hget("meta:{pokemon:pikachu}", "etag") != etag
    assert sandbox.not_modified("pokemon") == 0
    assert events(always_ask)[-1]["changed"] == "1"
    assert events(always_ask)[-1]["revalidated"] == "0"


def test_a_batch_revalidates_unchanged_names_and_stores_changed_ones(
    always_ask, client, sandbox
) -> None:
    """Three stored, one changed upstream: two 304s, one write; changed flags match."""
    names = ["bulbasaur", "ivysaur", "venusaur"]
    refresh_batch(names, "b1", runtime=always_ask, client=client, concurrency=3, defer=print)
    sandbox.reset()
    sandbox.change_record("pokemon", "ivysaur")
    a_later_job()
    outcome = refresh_batch(
        names, "b2", runtime=always_ask, client=client, concurrency=3, defer=print
    )
    assert (sorted(outcome.revalidated), outcome.stored) == (["bulbasaur", "venusaur"], ["ivysaur"])
    assert sandbox.conditional_calls() == {"pokemon": 3}
    assert sandbox.not_modified("pokemon") == 2
    second = {e["id"]: (e["changed"], e["revalidated"]) for e in events(always_ask)[3:]}
    assert second == {"bulbasaur": ("0", "1"), "ivysaur": ("1", "0"), "venusaur": ("0", "1")}


def test_the_freshness_window_follows_the_upstream_when_asked(client, sandbox) -> None:
    """FRESHNESS_FROM_UPSTREAM: PokeAPI's max-age keeps a result fresh despite max age 0."""
    settings = WorkerSettings(freshness_max_age=0, freshness_from_upstream=True)
    built = Runtime.build(settings, fakeredis.FakeRedis())
    pokemon.fetch_and_store("mew", "t1", runtime=built, client=client)
    pokemon.fetch_and_store("mew", "t2", runtime=built, client=client)
    assert sandbox.calls("pokemon") == 1
    assert built.store.redis.hget("meta:{pokemon:mew}", "max_age") == b"86400"
    capped = WorkerSettings(
        freshness_max_age=0, freshness_from_upstream=True, freshness_upstream_max_age=0
    )
    pokemon.fetch_and_store("mew", "t3", runtime=Runtime(capped, built.store), client=client)
    assert sandbox.not_modified("pokemon") == 1


def test_articles_revalidate_one_by_one_and_page_by_page(always_ask, sandbox) -> None:
    """sync_article and sync_articles send validators; unchanged ones are brought forward."""
    settings = ApiSettings(cms_base_url=sandbox.cms_url, http_retry_attempts=1)
    cms_client = CmsAPI(CmsAPI.configure(settings))
    cms.sync_one("hello-world", "a1", runtime=always_ask, client=cms_client)
    a_later_job()
    cms.sync_one("hello-world", "a2", runtime=always_ask, client=cms_client)
    assert sandbox.not_modified("article") == 1
    first = cms.sync_every("s1", runtime=always_ask, client=cms_client)
    assert first == {"articles": 44, "written": 44, "revalidated": 0, "removed": 0}
    a_later_job()
    again = cms.sync_every("s2", runtime=always_ask, client=cms_client)
    assert again == {"articles": 44, "written": 0, "revalidated": 44, "removed": 0}
    assert sandbox.not_modified("articles") == 1
    sandbox.change_record("article", "hello-world")
    a_later_job()
    changed = cms.sync_every("s3", runtime=always_ask, client=cms_client)
    assert changed == {"articles": 44, "written": 44, "revalidated": 0, "removed": 0}
    stored = orjson.loads(always_ask.store.redis.get("article:hello-world"))
    assert stored["title"] == "Hello, world (revision 1)"
    latest = {e["id"]: e["changed"] for e in events(always_ask)[-44:]}
    assert [slug for slug, flag in latest.items() if flag == "1"] == ["hello-world"]


def test_an_unchanged_page_whose_article_vanished_fetches_that_article(always_ask, sandbox) -> None:
    """A 304 can only bring forward what is stored: the missing one is fetched whole."""
    cms_client = CmsAPI(CmsAPI.configure(ApiSettings(cms_base_url=sandbox.cms_url)))
    cms.sync_every("s1", runtime=always_ask, client=cms_client)
    always_ask.store.redis.delete("article:hello-world")
    sandbox.reset()
    a_later_job()
    again = cms.sync_every("s2", runtime=always_ask, client=cms_client)
    assert again == {"articles": 44, "written": 1, "revalidated": 43, "removed": 0}
    assert sandbox.call_counts() == {"articles": 1, "article": 1}
    assert always_ask.store.redis.exists("article:hello-world")
