"""Refresh without downloading again: a real worker, FRESHNESS_MAX_AGE=0, the sandbox.

Every refresh of a stored key is a conditional request; an unchanged record costs a 304
(no body) and brings the metadata forward, a changed one is downloaded and stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import redis
import requests
from celery import Celery

from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for
from tests.support.redis_server import free_port

FETCH = "tasks.pokemon.fetch_pokemon"
CATALOG = "tasks.pokemon.refresh_catalog"
TIMEOUT = 30
CATALOG_NAMES = ["bulbasaur", "ivysaur", "venusaur", "charmander"]


class Setup(NamedTuple):
    producer: Celery
    worker: WorkerProcess
    env: dict[str, str]


@pytest.fixture(scope="module")
def always_ask(redis_server_url: str, sandbox_server: Any) -> Iterator[Setup]:
    """A worker of its own (own broker and backend) that asks the upstream every time."""
    env = worker_environment(
        redis_server_url,
        sandbox_server,
        CELERY_BROKER_URL=with_db(redis_server_url, 11),
        CELERY_RESULT_BACKEND=with_db(redis_server_url, 12),
        FRESHNESS_MAX_AGE="0",
        POKEMON_CATALOG=",".join(CATALOG_NAMES),
        CATALOG_BATCH_SIZE="2",
        METRICS_PORT=str(free_port()),
    )
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env).start(producer)
    try:
        yield Setup(producer, worker, env)
    finally:
        worker.stop()
        producer.close()


@pytest.fixture
def results(redis_url: str, always_ask: Any, sandbox: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def events(results: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in results.xrange("events:results")]


def test_an_unchanged_record_is_a_304_and_its_meta_moves_forward(
    always_ask, results: redis.Redis, sandbox: Any
) -> None:
    """Second job: one conditional call, a 304, the same value, new fetched_at and task."""
    producer = always_ask.producer
    first = producer.send_task(FETCH, args=["charizard"])
    value = first.get(timeout=TIMEOUT)
    meta_before = results.hgetall("meta:{pokemon:charizard}")
    second = producer.send_task(FETCH, args=["charizard"])
    assert second.get(timeout=TIMEOUT) == value
    assert sandbox.conditional_calls() == {"pokemon": 1}
    assert sandbox.not_modified("pokemon") == 1
    meta = results.hgetall("meta:{pokemon:charizard}")
    assert meta["task_id"] == second.id
    assert int(meta["fetched_at_ms"]) >= int(meta_before["fetched_at_ms"])
    assert meta["etag"] == meta_before["etag"]
    assert meta["last_modified"] == meta_before["last_modified"]
    assert json.loads(results.get("pokemon:charizard")) == value
    last = events(results)[-1]
    assert last == {
        "key": "pokemon:charizard",
        "kind": "pokemon",
        "id": "charizard",
        "task_id": second.id,
        "fetched_at_ms": meta["fetched_at_ms"],
        "changed": "0",
        "revalidated": "1",
        "fence": meta["fence"],
    }
    assert int(meta["fence"]) > int(meta_before["fence"])


def test_a_changed_record_is_downloaded_with_its_new_etag(
    always_ask, results: redis.Redis, sandbox: Any
) -> None:
    """The upstream changed it: 200, the new value and ETag, changed=1 revalidated=0."""
    producer = always_ask.producer
    before = producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)
    etag = results.hget("meta:{pokemon:pikachu}", "etag")
    changed = requests.post(f"{sandbox.base_url}/_sandbox/records/pokemon/pikachu", timeout=5)
    after = producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)
    assert after["weight"] != before["weight"]
    assert json.loads(results.get("pokemon:pikachu")) == after
    assert results.hget("meta:{pokemon:pikachu}", "etag") == changed.json()["etag"] != etag
    assert sandbox.conditional_calls() == {"pokemon": 1}
    assert sandbox.not_modified("pokemon") == 0
    assert (events(results)[-1]["changed"], events(results)[-1]["revalidated"]) == ("1", "0")


def test_the_outcome_line_and_the_metric_say_which(
    always_ask, results: redis.Redis, sandbox: Any
) -> None:
    """`revalidation=not_modified` on the job line; the counter by service and outcome."""
    producer = always_ask.producer
    producer.send_task(FETCH, args=["mew"]).get(timeout=TIMEOUT)
    job = producer.send_task(FETCH, args=["mew"])
    job.get(timeout=TIMEOUT)
    worker = always_ask.worker
    line = wait_for(
        lambda: next(
            (ln for ln in worker.log().splitlines() if job.id in ln and "job SUCCESS" in ln),
            None,
        ),
        timeout=5,
        what="the outcome line",
    )
    assert "revalidation=not_modified" in line
    port = always_ask.env["METRICS_PORT"]
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'apiworker_revalidations_total{outcome="not_modified",service="pokeapi"}' in body


def test_the_catalog_batch_path_revalidates_and_flags_exactly_the_changed(
    always_ask, results: redis.Redis, sandbox: Any
) -> None:
    """Refresh, change one record, refresh: 304s for the rest, changed=1 only for it."""
    producer = always_ask.producer
    keys = [f"pokemon:{name}" for name in CATALOG_NAMES]

    def refreshed_after(count: int) -> None:
        producer.send_task(CATALOG).get(timeout=TIMEOUT)
        wait_for(
            lambda: results.xlen("events:results") >= count,
            timeout=TIMEOUT,
            what=f"{count} result events",
        )

    refreshed_after(len(keys))
    assert all(results.exists(key) for key in keys)
    sandbox.reset()
    sandbox.change_record("pokemon", "venusaur")
    refreshed_after(2 * len(keys))
    second = {e["id"]: (e["changed"], e["revalidated"]) for e in events(results)[len(keys) :]}
    assert second == {
        "bulbasaur": ("0", "1"),
        "ivysaur": ("0", "1"),
        "venusaur": ("1", "0"),
        "charmander": ("0", "1"),
    }
    assert sandbox.conditional_calls() == {"pokemon": 4}
    assert sandbox.not_modified("pokemon") == 3
    assert results.xlen("events:failures") == 0


def test_sync_articles_revalidates_the_pages(
    always_ask, results: redis.Redis, sandbox: Any
) -> None:
    """The list page is conditional too: unchanged, every article is brought forward."""
    producer = always_ask.producer
    first = producer.send_task("tasks.cms.sync_articles").get(timeout=TIMEOUT)
    again = producer.send_task("tasks.cms.sync_articles").get(timeout=TIMEOUT)
    assert first == {"articles": 44, "written": 44, "revalidated": 0, "removed": 0}
    assert again == {"articles": 44, "written": 0, "revalidated": 44, "removed": 0}
    assert sandbox.not_modified("articles") == 1
    page = results.hgetall("meta:{article-page}:0:100")
    assert page["etag"]
    assert len(json.loads(page["ids"])) == 44
