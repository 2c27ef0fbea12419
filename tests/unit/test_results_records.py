"""Bounded, durable records: a failure record's size, failures kept while Redis is away,
and results of upstream items that are gone."""

from __future__ import annotations

from typing import Any

import fakeredis
import orjson
import pytest
import redis

from apis import CmsAPI
from apis.config import ApiSettings
from results.failure_record import capped, failure_record
from results.failures import FailureBuffer
from results.keys import Keys
from results.runtime import Runtime
from results.store import Fetched, ResultStore, now
from settings import WorkerSettings
from tasks import cms
from tests.support.metrics import sample


@pytest.fixture
def store() -> ResultStore:
    client = fakeredis.FakeRedis(decode_responses=True)
    return ResultStore(
        client, Keys(), events_maxlen=1000, failures_maxlen=1000, failure_max_bytes=4096
    )


def test_a_failure_record_is_capped_in_bytes(store: ResultStore) -> None:
    """A thousand 1 KB arguments (1 MB) leave a record of at most the cap, marked
    truncated; a small record is kept whole."""
    huge = failure_record("t", "id-1", ["x" * 5000] * 1000, {}, ValueError("é" * 900), 1)
    store.record_failure(huge)
    [(_, fields)] = store.redis.xrange("events:failures")
    assert sum(len(k.encode()) + len(v.encode()) for k, v in fields.items()) <= 4096
    assert fields["truncated"] == "1"
    assert fields["task_id"] == "id-1"
    assert fields["args"].endswith("...[cut]")
    small = failure_record("t", "id-2", ["mew"], {}, ValueError("no"), 1)
    assert capped(small, 4096) == small


def dropped() -> float:
    return sample("apiworker_failures_dropped_total")


def test_a_failure_redis_cannot_take_is_kept_and_written_when_it_answers() -> None:
    """Redis away: the record is kept (not only logged), then written first when Redis
    answers; a full buffer drops its oldest and counts it."""
    stream: list[dict[str, str]] = []
    up = False

    def write(record: Any) -> None:
        if not up:
            raise redis.ConnectionError("Redis is away")
        stream.append(dict(record))

    buffer = FailureBuffer(2)
    before = dropped()
    for task_id in ("a", "b", "c"):
        assert not buffer.record(write, {"task_id": task_id})
    assert len(buffer) == 2
    assert dropped() - before == 1  # "a", the oldest, did not fit
    up = True
    assert buffer.record(write, {"task_id": "d"})
    assert [record["task_id"] for record in stream] == ["b", "c", "d"]
    assert len(buffer) == 0


@pytest.fixture
def cms_runtime() -> Runtime:
    return Runtime.build(WorkerSettings(freshness_max_age=0), fakeredis.FakeRedis())


def test_articles_gone_from_the_list_are_removed_with_an_event(
    cms_runtime: Runtime, sandbox: Any
) -> None:
    """An article the list no longer has (its page changed, or the list shrank past a
    page) is removed, with a `removed=1` event; a late write of it is refused."""
    settings = ApiSettings(cms_base_url=sandbox.cms_url, http_retry_attempts=1)
    client = CmsAPI(CmsAPI.configure(settings))
    store = cms_runtime.store
    cms.sync_every("s1", runtime=cms_runtime, client=client)
    # Two articles that were listed once: one on the first page (whose validators are
    # dropped, so it is downloaded again), one on a page past the list's end now.
    page = f"0:{cms.PAGE_SIZE}"
    stored = store.read_page("article", page)
    assert stored is not None
    first_page = store.keys.page("article", page)
    store.redis.hset(first_page, "ids", orjson.dumps([*stored.idents, "ghost-1"]))
    store.redis.hdel(first_page, "etag", "last_modified")
    past = f"{cms.PAGE_SIZE}:{cms.PAGE_SIZE}"  # the list has 44: one page
    store.redis.hset(
        store.keys.page("article", past),
        mapping={"ids": orjson.dumps(["ghost-2"]), "fetched_at_ms": 1, "total": 1},
    )
    for ghost in ("ghost-1", "ghost-2"):
        store.write(Fetched("article", ghost, {"slug": ghost}, now()), "old-sync")
    result = cms.sync_every("s2", runtime=cms_runtime, client=client)
    assert result["removed"] == 2
    assert not store.redis.exists("article:ghost-1", "article:ghost-2")
    assert store.read_page("article", past) is None
    removed = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in store.redis.xrange("events:results")
        if fields.get(b"removed") == b"1"
    ]
    assert sorted(event["id"] for event in removed) == ["ghost-1", "ghost-2"]
    # A write fetched before the removal (a lower fence) does not bring it back.
    late = Fetched("article", "ghost-1", {"slug": "ghost-1"}, now(), fence=1)
    assert not store.write(late, "late")
    assert not store.redis.exists("article:ghost-1")
