"""The beat schedule follows configuration; a disabled entry is absent."""

from __future__ import annotations

import pytest

from apis import reset_clients
from settings import WorkerSettings
from worker.beat import beat_schedule


@pytest.fixture
def upstreams(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("CMS_BASE_URL", "http://127.0.0.1:1/api/v1")
    monkeypatch.setenv("SEMAPHORE_BASE_URL", "http://127.0.0.1:1/api/v1alpha")
    monkeypatch.setenv("SEMAPHORE_API_TOKEN", "beat-test-token")
    reset_clients()
    return monkeypatch


def test_every_configured_entry_is_scheduled_at_its_interval(upstreams) -> None:
    """Three upstreams configured, three entries, each at its own interval."""
    schedule = beat_schedule(
        WorkerSettings(
            pokemon_refresh_interval=60, cms_sync_interval=120, semaphore_sync_interval=30
        )
    )
    assert {name: entry["task"] for name, entry in schedule.items()} == {
        "refresh-pokemon-catalog": "tasks.pokemon.refresh_catalog",
        "sync-cms-articles": "tasks.cms.sync_articles",
        "sync-semaphore-pipelines": "tasks.semaphore.sync_all_projects",
    }
    seconds = {name: entry["schedule"].total_seconds() for name, entry in schedule.items()}
    assert seconds == {
        "refresh-pokemon-catalog": 60,
        "sync-cms-articles": 120,
        "sync-semaphore-pipelines": 30,
    }


def test_an_interval_of_zero_removes_the_entry(upstreams) -> None:
    """Disabled means absent, not scheduled-and-skipped."""
    schedule = beat_schedule(WorkerSettings(cms_sync_interval=0))
    assert "sync-cms-articles" not in schedule
    assert "refresh-pokemon-catalog" in schedule


def test_an_unconfigured_upstream_gets_no_entry() -> None:
    """Without a Semaphore token or CMS URL, their syncs are not scheduled."""
    schedule = beat_schedule(WorkerSettings())
    assert list(schedule) == ["refresh-pokemon-catalog"]


def test_every_periodic_job_is_bulk_for_its_budget() -> None:
    """Each entry sends the class header (Celery's `headers` option): on-demand jobs go
    ahead of it when an upstream's budget binds."""
    schedule = beat_schedule(WorkerSettings())
    assert schedule
    for entry in schedule.values():
        assert entry["options"]["headers"] == {"apiworker_class": "bulk"}
