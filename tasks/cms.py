"""CMS jobs: one article by slug, or every article. Results at `article:{slug}`."""

from __future__ import annotations

from typing import Any

from apis import CmsAPI, get_client
from tasks import validation
from tasks.base import UpstreamTask
from tasks.runtime import Runtime, get_runtime
from tasks.single_flight import fetch_once
from tasks.store import Fetched, now
from tasks.transforms import ArticleSummary, article_summary
from worker.app import app

KIND = "article"


def sync_one(slug: str, task_id: str, *, runtime: Runtime, client: CmsAPI) -> ArticleSummary:
    def fetch() -> Fetched:
        payload = client.get(slug)
        summary = article_summary(payload.data)
        return Fetched(KIND, summary["slug"], summary, now(), payload.etag, payload.last_modified)

    value: ArticleSummary = fetch_once(
        runtime.store,
        KIND,
        slug,
        fetch,
        task_id=task_id,
        max_age=runtime.settings.freshness_max_age,
        lock_seconds=runtime.settings.single_flight_lock_seconds,
        wait_seconds=runtime.settings.single_flight_wait_seconds,
    )
    return value


def sync_every(task_id: str, *, runtime: Runtime, client: CmsAPI) -> dict[str, Any]:
    """Fetch every page, then write all articles in one pipeline."""
    fetched_at = now()
    results = [
        Fetched(KIND, summary["slug"], summary, fetched_at)
        for summary in map(article_summary, client.get_all_articles())
    ]
    written = runtime.store.write_many(results, task_id)
    return {"articles": len(results), "written": written}


@app.task(name="tasks.cms.sync_article", base=UpstreamTask, bind=True)
def sync_article(self: UpstreamTask, slug: str) -> ArticleSummary:
    """Store `article:{slug}`; returns the same summary."""
    checked = validation.slug(slug)
    return sync_one(checked, self.request.id, runtime=get_runtime(), client=get_client(CmsAPI))


@app.task(name="tasks.cms.sync_articles", base=UpstreamTask, bind=True)
def sync_articles(self: UpstreamTask) -> dict[str, Any]:
    """Store every article; returns how many were fetched and written."""
    return sync_every(self.request.id, runtime=get_runtime(), client=get_client(CmsAPI))
