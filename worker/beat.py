"""The beat schedule, built from the upstream registry: each entry's periodic jobs
(`Upstream.periodic`) at the interval its variable sets; an interval of 0, or an upstream
that is not configured, leaves the job out.

Every periodic job is bulk for its upstream's budget (on-demand jobs get the next tokens
when it binds): each entry sends the class header, Celery's own `headers` option.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from apis import client_class
from apis.config import ApiSettings, get_settings, upstream_settings_model
from settings import WorkerSettings
from tasks.messages import BULK_HEADERS
from upstreams import Periodic, Upstream, all_upstreams


def beat_schedule(
    settings: WorkerSettings, upstreams: Iterable[Upstream] | None = None
) -> dict[str, dict[str, Any]]:
    """One entry per periodic job of every upstream (by default the registry's)."""
    api = get_settings()
    entries: dict[str, dict[str, Any]] = {}
    for upstream in all_upstreams() if upstreams is None else upstreams:
        if not upstream.periodic or not _configured(api, upstream):
            continue
        for job in upstream.periodic:
            seconds = _interval(settings, upstream, job)
            if seconds > 0:
                entries[job.name] = {
                    "task": job.task,
                    "schedule": timedelta(seconds=seconds),
                    "options": {"headers": dict(BULK_HEADERS)},
                }
    return entries


def _configured(api: ApiSettings, upstream: Upstream) -> bool:
    """Its base URL is set, and its token too when its client needs one."""
    if not api.base_url(upstream):
        return False
    cls = client_class(upstream)
    return not cls.requires_token or cls.configure(api).token is not None


def _interval(settings: WorkerSettings, upstream: Upstream, job: Periodic) -> float:
    """The seconds `job.interval_setting` sets: a field of the worker's settings, else of
    the upstream's own settings model; 0 when neither has it."""
    name = job.interval_setting.lower()
    if name in type(settings).model_fields:
        return float(getattr(settings, name))
    model = upstream_settings_model(upstream)
    return float(getattr(model(), name, 0) or 0) if model is not None else 0.0
