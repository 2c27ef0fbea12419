"""The beat schedule, built from settings: an interval of 0 leaves the entry out.

Every periodic job is bulk for its upstream's budget (on-demand jobs get the next tokens
when it binds): each entry sends the class header, Celery's own `headers` option.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from apis.config import get_settings
from settings import WorkerSettings
from tasks.messages import BULK_HEADERS


def beat_schedule(settings: WorkerSettings) -> dict[str, dict[str, Any]]:
    """One entry per periodic job; an upstream that is not configured gets none."""
    upstreams = get_settings()
    entries: dict[str, dict[str, Any]] = {}
    if settings.pokemon_refresh_interval > 0 and upstreams.pokeapi_base_url:
        entries["refresh-pokemon-catalog"] = {
            "task": "tasks.pokemon.refresh_catalog",
            "schedule": timedelta(seconds=settings.pokemon_refresh_interval),
        }
    if settings.cms_sync_interval > 0 and upstreams.cms_base_url:
        entries["sync-cms-articles"] = {
            "task": "tasks.cms.sync_articles",
            "schedule": timedelta(seconds=settings.cms_sync_interval),
        }
    if (
        settings.semaphore_sync_interval > 0
        and upstreams.semaphore_base_url
        and upstreams.semaphore_api_token
    ):
        entries["sync-semaphore-pipelines"] = {
            "task": "tasks.semaphore.sync_all_projects",
            "schedule": timedelta(seconds=settings.semaphore_sync_interval),
        }
    for entry in entries.values():
        entry["options"] = {"headers": dict(BULK_HEADERS)}
    return entries
