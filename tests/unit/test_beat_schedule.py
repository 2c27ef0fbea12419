"""The beat schedule follows configuration; a disabled entry is absent."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings

from apis import ApiClient, ApiSettings, reset_clients
from upstreams import BUILT_IN, Periodic, Upstream
from worker.beat import beat_schedule


class TideAPI(ApiClient):
    """An upstream added from outside, for the schedule alone."""

    service = "tides"


class TideSettings(BaseSettings):
    tides_base_url: str | None = None
    tides_sync_interval: float = 0.0


TIDES = Upstream(
    name="tides",
    client=f"{__name__}:TideAPI",
    tasks="tides.tasks",
    base_url_setting="TIDES_BASE_URL",
    settings=f"{__name__}:TideSettings",
    periodic=(Periodic("sync-tides", "tides.tasks.sync", "TIDES_SYNC_INTERVAL"),),
)


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
        ApiSettings(pokemon_refresh_interval=60, cms_sync_interval=120, semaphore_sync_interval=30)
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
    schedule = beat_schedule(ApiSettings(cms_sync_interval=0))
    assert "sync-cms-articles" not in schedule
    assert "refresh-pokemon-catalog" in schedule


def test_an_unconfigured_upstream_gets_no_entry() -> None:
    """Without a Semaphore token or CMS URL, their syncs are not scheduled."""
    schedule = beat_schedule(ApiSettings())
    assert list(schedule) == ["refresh-pokemon-catalog"]


def test_every_periodic_job_is_bulk_for_its_budget() -> None:
    """Each entry sends the class header (Celery's `headers` option): on-demand jobs go
    ahead of it when an upstream's budget binds."""
    schedule = beat_schedule(ApiSettings())
    assert schedule
    for entry in schedule.values():
        assert entry["options"]["headers"] == {"apiworker_class": "bulk"}


def test_an_upstream_entry_brings_its_own_periodic_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """No line of worker/beat.py names an upstream: the entry's job, at the interval its
    own settings model reads, once its base URL is set."""
    monkeypatch.setenv("TIDES_SYNC_INTERVAL", "45")
    assert "sync-tides" not in beat_schedule(ApiSettings(), (*BUILT_IN, TIDES))
    monkeypatch.setenv("TIDES_BASE_URL", "http://127.0.0.1:1/tides")
    schedule = beat_schedule(ApiSettings(), (*BUILT_IN, TIDES))
    assert schedule["sync-tides"]["task"] == "tides.tasks.sync"
    assert schedule["sync-tides"]["schedule"].total_seconds() == 45
    assert "refresh-pokemon-catalog" in schedule
