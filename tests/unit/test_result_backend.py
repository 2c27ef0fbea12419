"""The one-round-trip result backend against a real Redis: same key, value, expiry, message."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, states

from worker.result_backend import OneRoundTripRedisBackend, backend_class


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("result-backend-test", broker="memory://", backend=redis_url)
    app.conf.update(result_serializer="json", result_accept_content=["json"], result_expires=120)
    app.backend_cls = OneRoundTripRedisBackend
    yield app
    app.close()


def test_the_backend_class_is_chosen_for_redis_urls_only() -> None:
    """redis:// and rediss:// get the one-round-trip class; other schemes keep Celery's."""
    assert backend_class("redis://127.0.0.1:6390/2") is OneRoundTripRedisBackend
    assert backend_class("rediss://127.0.0.1:6390/2") is OneRoundTripRedisBackend
    assert backend_class("sentinel://127.0.0.1:26379") is None
    assert backend_class(None) is None


def test_a_result_is_stored_with_celerys_key_value_and_expiry(app: Celery, redis_client) -> None:
    """The stored meta is Celery's, under celery-task-meta-ID, expiring as configured."""
    backend = app.backend
    assert isinstance(backend, OneRoundTripRedisBackend)
    backend.store_result("job-1", {"name": "mew"}, states.SUCCESS)
    meta = json.loads(redis_client.get("celery-task-meta-job-1"))
    assert (meta["status"], meta["result"], meta["task_id"]) == (
        "SUCCESS",
        {"name": "mew"},
        "job-1",
    )
    assert 0 < redis_client.ttl("celery-task-meta-job-1") <= 120
    assert app.AsyncResult("job-1").get(timeout=5) == {"name": "mew"}


def test_a_store_is_one_script_call_and_publishes_the_meta(app: Celery, redis_client) -> None:
    """One EVALSHA per stored result (no GET, no MULTI), and waiting callers get the meta."""
    backend = app.backend
    backend.store_result("warm-up", 1, states.SUCCESS)  # loads the script once
    listener = redis.Redis.from_url(backend.url, decode_responses=True).pubsub()
    listener.subscribe("celery-task-meta-job-2")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    redis_client.config_resetstat()
    backend.store_result("job-2", 42, states.SUCCESS)
    stats = redis_client.info("commandstats")
    # Commands run inside a script are counted too: one GET, SET and PUBLISH, all in it.
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_get"]["calls"] == stats["cmdstat_set"]["calls"] == 1
    assert not {"cmdstat_multi", "cmdstat_exec", "cmdstat_setex"} & set(stats)
    message = listener.get_message(timeout=5)
    assert message is not None
    assert json.loads(message["data"])["result"] == 42
    listener.close()


def test_a_success_is_never_overwritten_by_a_late_duplicate(app: Celery, redis_client) -> None:
    """A FAILURE or RETRY stored after a SUCCESS leaves the SUCCESS in place, as in Celery."""
    backend = app.backend
    backend.store_result("job-3", "first", states.SUCCESS)
    backend.store_result("job-3", RuntimeError("late"), states.FAILURE)
    backend.store_result("job-3", None, states.RETRY)
    meta = json.loads(redis_client.get("celery-task-meta-job-3"))
    assert (meta["status"], meta["result"]) == ("SUCCESS", "first")


def test_a_failure_replaces_an_earlier_retry_state(app: Celery, redis_client) -> None:
    """States other than SUCCESS are overwritten, so a retried job ends in its final state."""
    backend = app.backend
    backend.store_result("job-4", None, states.RETRY)
    backend.store_result("job-4", ValueError("bad"), states.FAILURE)
    meta = json.loads(redis_client.get("celery-task-meta-job-4"))
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ValueError"
