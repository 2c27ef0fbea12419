"""CMS jobs: one article by slug, or every article. Results at `article:{slug}`."""

from __future__ import annotations

from typing import Any, TypedDict

from celery import shared_task

from apis import CmsAPI, get_client
from apis.cms import MAX_PAGE_SIZE
from results.outcome import note_revalidation
from results.runtime import Runtime, get_runtime
from results.single_flight import FetchOnceJob
from results.store import Fetched, Page, Unchanged, now
from tasks import validation
from tasks.base import UpstreamTask
from tasks.errors import InvalidPayload
from tasks.transforms import field, mapping, optional_str

KIND = "article"
PAGE_SIZE = MAX_PAGE_SIZE


class ArticleSummary(TypedDict):
    id: int | str
    slug: str
    title: str
    author: str | None
    tags: list[str]
    published_at: str | None
    updated_at: str | None


def article_summary(article: object) -> ArticleSummary:
    """CMS article → the fields other services list and link, without the body."""
    payload = mapping(article, "article")
    tags = payload.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise InvalidPayload("field 'tags' must be a list of strings")
    return {
        "id": field(payload, "id", (int, str)),
        "slug": field(payload, "slug", str),
        "title": field(payload, "title", str),
        "author": optional_str(payload, "author"),
        "tags": list(tags),
        "published_at": optional_str(payload, "published_at"),
        "updated_at": optional_str(payload, "updated_at"),
    }


#: `article:{slug}`: one article's summary.
ARTICLE = FetchOnceJob(
    kind=KIND, get=CmsAPI.get, transform=article_summary, ident_of=lambda s: s["slug"]
)


def sync_one(slug: str, task_id: str, *, runtime: Runtime, client: CmsAPI) -> ArticleSummary:
    """Store one article; a stored one is revalidated (a 304 brings it forward)."""
    return ARTICLE.run(client, slug, task_id, runtime=runtime)


def sync_every(task_id: str, *, runtime: Runtime, client: CmsAPI) -> dict[str, Any]:
    """Fetch every page (each conditionally, by the validators it had last time), then
    write the articles of changed pages and revalidate those of unchanged ones, in one
    pipeline. An unchanged page's articles are the ids it listed last time."""
    store = runtime.store
    items: list[Fetched | Unchanged] = []
    pages: list[Page] = []
    offset = 0
    while True:
        page_id = f"{offset}:{PAGE_SIZE}"
        known = store.read_page(KIND, page_id)
        validators = known.validators if known is not None else None
        payload = client.get_articles_page(PAGE_SIZE, offset, validators=validators)
        if validators is not None:
            note_revalidation(modified=not payload.not_modified)
        fetched_at = now()
        if payload.not_modified and known is not None:
            slugs, total = known.idents, known.total
            items.extend(Unchanged(KIND, slug, fetched_at) for slug in slugs)
        else:
            summaries = [article_summary(entity) for entity in payload.data["entities"]]
            slugs, total = [summary["slug"] for summary in summaries], payload.data["total"]
            items.extend(Fetched(KIND, s["slug"], s, fetched_at) for s in summaries)
        pages.append(Page(page_id, payload.etag, payload.last_modified, slugs, total, fetched_at))
        offset += len(slugs)
        if not slugs or offset >= total:
            break
    applied = store.apply_many(items, task_id)
    # An unchanged page whose article is no longer stored: that one is fetched whole.
    gone = [item.ident for item, how in zip(items, applied, strict=True) if how == "gone"]
    refetched = [_whole_article(client, slug) for slug in gone]
    written = applied.count("written") + store.write_many(refetched, task_id)
    removed = _remove_unlisted(runtime, pages, offset)
    store.write_pages(KIND, pages)
    return {
        "articles": len(items),
        "written": written,
        "revalidated": applied.count("revalidated"),
        "removed": removed,
    }


def _remove_unlisted(runtime: Runtime, pages: list[Page], end: int) -> int:
    """Remove the articles the list no longer has, and the pages past its new end.

    What the pages listed last time (the pages just fetched, as they were stored, and
    any stored page past the list's end now: it shrank) less what they list now. Each
    removal leaves a `removed=1` event (results/store.py).
    """
    store = runtime.store
    listed = {slug for page in pages for slug in page.idents}
    before: set[str] = set()
    for page in pages:
        known = store.read_page(KIND, page.page)
        if known is not None:
            before.update(known.idents)
    stale: list[str] = []
    offset = max(end, len(pages) * PAGE_SIZE)
    while (known := store.read_page(KIND, f"{offset}:{PAGE_SIZE}")) is not None:
        before.update(known.idents)
        stale.append(known.page)
        offset += PAGE_SIZE
    unlisted = sorted(before - listed)
    removed = store.remove(
        KIND, unlisted, tombstone_seconds=runtime.settings.result_tombstone_seconds
    )
    store.remove_pages(KIND, stale)
    return removed


def _whole_article(client: CmsAPI, slug: str) -> Fetched:
    payload = client.get(slug)
    summary = article_summary(payload.data)
    return Fetched(KIND, summary["slug"], summary, now(), payload.etag, payload.last_modified)


@shared_task(name="tasks.cms.sync_article", base=UpstreamTask, bind=True)
def sync_article(self: UpstreamTask, slug: str) -> ArticleSummary:
    """Store `article:{slug}`; returns the same summary."""
    checked = validation.slug(slug)
    return sync_one(checked, self.request.id, runtime=get_runtime(), client=get_client(CmsAPI))


@shared_task(name="tasks.cms.sync_articles", base=UpstreamTask, bind=True, bulk=True)
def sync_articles(self: UpstreamTask) -> dict[str, Any]:
    """Store every article; returns how many were listed, written and revalidated."""
    return sync_every(self.request.id, runtime=get_runtime(), client=get_client(CmsAPI))
