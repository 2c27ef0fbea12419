"""The service as another service uses it: send a task by name, read the Redis keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery

from apis.config import ApiSettings
from ops.processes.worker import WorkerProcess
from settings import WorkerSettings
from tests.support.celery_worker import wait_for

CHARIZARD = {
    "id": 6,
    "name": "charizard",
    "image": "https://raw.githubusercontent.com/PokeAPI/sprites/master/sprites/pokemon/6.png",
    "height": "170 cm",
    "weight": "90.5 kg",
}
FETCH = "tasks.pokemon.fetch_pokemon"
TIMEOUT = 30
# Production defaults, which the session worker runs with (tests/integration/conftest.py).
ATTEMPTS = ApiSettings.model_fields["http_retry_attempts"].default
MAX_RETRIES = WorkerSettings.model_fields["task_max_retries"].default


def failures(results: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in results.xrange("events:failures")]


def test_fetch_pokemon_by_name_stores_the_contract(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """charizard sent by name with no queue: exact JSON at pokemon:charizard, meta, event."""
    job = producer.send_task(FETCH, args=["charizard"])
    assert job.get(timeout=TIMEOUT) == CHARIZARD
    assert json.loads(results.get("pokemon:charizard")) == CHARIZARD
    assert results.get("pokemon:charizard") == json.dumps(CHARIZARD, separators=(",", ":"))
    meta = results.hgetall("meta:{pokemon:charizard}")
    assert meta["task_id"] == job.id
    assert int(meta["fetched_at_ms"]) > 0
    assert meta["etag"]
    [(_, event)] = results.xrange("events:results")
    assert event["key"] == "pokemon:charizard"
    assert event["kind"] == "pokemon"
    assert event["id"] == "charizard"
    assert event["task_id"] == job.id
    assert sandbox.calls("pokemon") == 1


def test_case_and_id_inputs_share_the_canonical_key(producer: Celery, results: redis.Redis) -> None:
    """`Charizard` and `6` both land in pokemon:charizard."""
    assert producer.send_task(FETCH, args=["Charizard"]).get(timeout=TIMEOUT) == CHARIZARD
    results.delete("pokemon:charizard", "meta:{pokemon:charizard}", "index:pokemon-ids")
    assert producer.send_task(FETCH, args=["6"]).get(timeout=TIMEOUT) == CHARIZARD
    assert json.loads(results.get("pokemon:charizard")) == CHARIZARD
    assert results.keys("pokemon:*") == ["pokemon:charizard"]


def test_routed_queue_is_consumed_too(producer: Celery, results: redis.Redis) -> None:
    """A producer that routes to the `pokeapi` queue is served as well."""
    job = producer.send_task(FETCH, args=["pikachu"], queue="pokeapi")
    assert job.get(timeout=TIMEOUT)["name"] == "pikachu"


def test_unknown_name_fails_once_with_a_record(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """404: FAILURE after one upstream call, one failure record, no retry."""
    job = producer.send_task(FETCH, args=["missingno"])
    with pytest.raises(Exception, match="not found"):
        job.get(timeout=TIMEOUT)
    assert job.state == "FAILURE"
    assert sandbox.calls("pokemon") == 1
    [record] = wait_for(lambda: failures(results), timeout=5, what="failure record")
    assert record["task"] == FETCH
    assert record["error"] == "NotFound"
    assert json.loads(record["args"]) == ["missingno"]
    assert record["attempts"] == "1"
    assert record["task_id"] == job.id


def test_two_503s_then_success_after_three_calls(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """The client's retries absorb a short blip."""
    sandbox.inject("pokemon", "status", status=503, times=2)
    assert producer.send_task(FETCH, args=["charizard"]).get(timeout=TIMEOUT) == CHARIZARD
    assert sandbox.calls("pokemon") == 3


def test_persistent_503_costs_exactly_the_worst_case(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """At the defaults, 4 client attempts x (1 + 3 task retries) = 16 calls, one record."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    job = producer.send_task(FETCH, args=["charizard"])
    with pytest.raises(Exception, match="upstream server error"):
        job.get(timeout=TIMEOUT)
    executions = MAX_RETRIES + 1
    assert (ATTEMPTS, executions) == (4, 4)  # the figures docs/reliability.md gives
    assert sandbox.calls("pokemon") == ATTEMPTS * executions
    [record] = wait_for(lambda: failures(results), timeout=5, what="failure record")
    assert record["error"] == "ServerError"
    assert record["attempts"] == str(executions)


def test_a_task_retry_recovers(producer: Celery, results: redis.Redis, sandbox: Any) -> None:
    """Failures that outlast the client's budget are retried by Celery and succeed."""
    sandbox.inject("pokemon", "status", status=503, times=4)
    assert producer.send_task(FETCH, args=["charizard"]).get(timeout=TIMEOUT) == CHARIZARD
    assert sandbox.calls("pokemon") == 5
    assert failures(results) == []


@pytest.mark.parametrize(
    "bad", ["", "a" * 101, "../admin", "pika chu", "x?y=1", None, ["charizard"], {"a": 1}, 1.5]
)
def test_bad_input_fails_without_an_upstream_call(
    producer: Celery, results: redis.Redis, sandbox: Any, bad: object
) -> None:
    """Invalid arguments: FAILURE at once, zero upstream calls, a failure record."""
    job = producer.send_task(FETCH, args=[bad])
    with pytest.raises(Exception, match="name_or_id"):
        job.get(timeout=TIMEOUT)
    assert sandbox.calls() == 0
    [record] = wait_for(lambda: failures(results), timeout=5, what="failure record")
    assert record["error"] == "InvalidInput"
    assert record["attempts"] == "1"


def test_a_pickled_message_is_refused_and_the_worker_keeps_serving(
    producer: Celery, results: redis.Redis, sandbox: Any, celery_worker: WorkerProcess
) -> None:
    """A pickle body is never executed; the next JSON job is served."""
    producer.send_task(FETCH, args=["mew"], serializer="pickle")
    assert producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)["id"] == 25
    wait_for(
        lambda: (
            "ContentDisallowed" in celery_worker.log()
            or "Refusing to deserialize" in celery_worker.log()
        ),
        timeout=5,
        what="the refusal in the worker log",
    )
    assert results.get("pokemon:mew") is None
    assert sandbox.call_counts().get("pokemon") == 1
    assert celery_worker.alive


def test_unknown_task_name_is_dropped_and_the_worker_keeps_serving(
    producer: Celery, results: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """A typo in a task name is logged, not fatal."""
    producer.send_task("tasks.pokemon.no_such_task", args=["x"])
    assert producer.send_task(FETCH, args=["mew"]).get(timeout=TIMEOUT)["id"] == 151
    wait_for(
        lambda: "tasks.pokemon.no_such_task" in celery_worker.log(),
        timeout=5,
        what="the unregistered task in the worker log",
    )
    assert celery_worker.alive


def test_twenty_concurrent_jobs_for_one_name_make_one_upstream_call(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """Single flight: the first job fetches, the others wait and reuse its result."""
    sandbox.inject("pokemon", "latency", seconds=0.5, times=None)
    jobs = [producer.send_task(FETCH, args=["charizard"]) for _ in range(20)]
    assert [job.get(timeout=TIMEOUT) for job in jobs] == [CHARIZARD] * 20
    assert sandbox.calls("pokemon") == 1


def test_a_fresh_result_is_served_without_an_upstream_call(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """Within the freshness window a second job reads Redis instead of the upstream."""
    producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)
    producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)
    assert sandbox.calls("pokemon") == 1


def test_cms_and_semaphore_tasks_store_their_keys(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """Articles and pipelines land at their documented keys."""
    summary = producer.send_task("tasks.cms.sync_article", args=["hello-world"]).get(
        timeout=TIMEOUT
    )
    assert json.loads(results.get("article:hello-world")) == summary
    outcome = producer.send_task("tasks.cms.sync_articles").get(timeout=TIMEOUT)
    assert outcome["articles"] == len(results.keys("article:*"))
    projects = producer.send_task("tasks.semaphore.sync_all_projects").get(timeout=TIMEOUT)
    assert projects == {"projects": 3}
    stored = json.loads(results.get("semaphore-projects:all"))
    project_id = stored[0]["id"]
    pipelines = producer.send_task("tasks.semaphore.sync_pipelines", args=[project_id]).get(
        timeout=TIMEOUT
    )
    assert json.loads(results.get(f"semaphore-pipelines:{project_id}")) == pipelines


def test_refresh_catalog_fans_out_one_job_per_configured_name(
    producer: Celery, results: redis.Redis, sandbox: Any
) -> None:
    """The beat task stores charizard, pikachu and mew (one batch job by default)."""
    outcome = producer.send_task("tasks.pokemon.refresh_catalog").get(timeout=TIMEOUT)
    assert outcome == {"names": 3, "jobs": 1}
    wait_for(lambda: len(results.keys("pokemon:*")) == 3, timeout=TIMEOUT, what="three results")
    assert sorted(results.keys("pokemon:*")) == [
        "pokemon:charizard",
        "pokemon:mew",
        "pokemon:pikachu",
    ]
    assert sandbox.calls("pokemon") == 3


def backend_meta(producer: Celery, job_id: str) -> Any:
    """The job's result-backend entry as Celery stored it, or None."""
    return producer.backend.get(producer.backend.get_key_for_task(job_id))


def test_a_job_nobody_waits_on_stores_its_result_but_no_backend_copy(
    producer: Celery, results: redis.Redis
) -> None:
    """`ignore_result=True` (stock Celery): the results keys are written, the result
    backend keeps no copy of the success; the job sent next without it still answers
    `AsyncResult.get`."""
    ignored = producer.send_task(FETCH, args=["bulbasaur"], ignore_result=True)
    waited = producer.send_task(FETCH, args=["ivysaur"])
    assert waited.get(timeout=TIMEOUT)["name"] == "ivysaur"
    wait_for(lambda: results.exists("pokemon:bulbasaur"), timeout=TIMEOUT, what="stored")
    assert json.loads(results.get("pokemon:bulbasaur"))["name"] == "bulbasaur"
    assert results.hget("meta:{pokemon:bulbasaur}", "task_id") == ignored.id
    assert backend_meta(producer, waited.id) is not None
    assert backend_meta(producer, ignored.id) is None


def test_a_failure_nobody_waits_on_is_still_in_the_backend(
    producer: Celery, results: redis.Redis
) -> None:
    """A job sent with `ignore_result=True` that fails leaves its FAILURE state in the
    result backend as well as its failure record."""
    job = producer.send_task(FETCH, args=["no such name!"], ignore_result=True)
    [record] = wait_for(lambda: failures(results), timeout=TIMEOUT, what="failure record")
    assert record["task_id"] == job.id
    meta = wait_for(lambda: backend_meta(producer, job.id), timeout=5, what="backend entry")
    assert json.loads(meta)["status"] == "FAILURE"
