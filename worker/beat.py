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

from apis.config import ApiSettings
from tasks.messages import BULK_HEADERS
from upstreams import Periodic, Upstream, all_upstreams


def beat_schedule(
    api: ApiSettings, upstreams: Iterable[Upstream] | None = None
) -> dict[str, dict[str, Any]]:
    """One entry per periodic job of every upstream (by default the registry's)."""
    entries: dict[str, dict[str, Any]] = {}
    for upstream in all_upstreams() if upstreams is None else upstreams:
        if not upstream.periodic or not _configured(api, upstream):
            continue
        for job in upstream.periodic:
            seconds = _interval(api, upstream, job)
            if seconds > 0:
                entries[job.name] = {
                    "task": job.task,
                    "schedule": timedelta(seconds=seconds),
                    "options": {"headers": dict(BULK_HEADERS)},
                }
    return entries


def _configured(api: ApiSettings, upstream: Upstream) -> bool:
    """Its base URL is set, and its token too when it takes one."""
    if not api.base_url(upstream):
        return False
    return not upstream.token_setting or api.token(upstream) is not None


def _interval(api: ApiSettings, upstream: Upstream, job: Periodic) -> float:
    """The seconds `job.interval_setting` sets, a variable of the upstream's own settings
    (0 when they have no such variable)."""
    return float(api.upstream_value(upstream, job.interval_setting) or 0)
