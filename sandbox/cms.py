"""Headless CMS impersonation: `/api/v1/article/{slug}` and `/api/v1/articles`.

The articles are generated, not random: the same slug always has the same content, so
tests can assert on it and caches see stable bodies between runs.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from sandbox.messages import (
    Body,
    Request,
    Response,
    body_response,
    dump_json,
    http_date,
    json_response,
    query_int,
)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
GENERATED_ARTICLES = 42

_EPOCH = datetime(2024, 1, 8, 9, 0, tzinfo=UTC)
_AUTHORS = ("Ada Brennan", "Tomas Okafor", "Mei Lindqvist", "Rafael Duarte", "Priya Natarajan")
_TOPICS = (
    ("caching", "Caching upstream responses without serving stale data"),
    ("retries", "Retrying failed requests without making an outage worse"),
    ("timeouts", "Choosing timeouts for calls you do not control"),
    ("pagination", "Walking paginated APIs to the very last page"),
    ("observability", "Counting what your workers actually fetch"),
    ("queues", "Keeping a task queue healthy under load"),
    ("schemas", "Validating third-party JSON at the boundary"),
)
_PARAGRAPHS = (
    "Every upstream fails eventually; the question is what your callers see when it does.",
    "A small, explicit budget for each request keeps one slow dependency from stalling "
    "the whole worker pool.",
    "Measure first: the numbers usually point somewhere other than where intuition does.",
    "Idempotent reads can be retried freely, but only with backoff and a cap on the total.",
    "Treat every field from a third party as untrusted input until it has been validated.",
)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _generated(number: int) -> dict[str, Any]:
    tag, title = _TOPICS[number % len(_TOPICS)]
    published = _EPOCH + timedelta(days=3 * number, hours=number % 5)
    paragraphs = [_PARAGRAPHS[(number + shift) % len(_PARAGRAPHS)] for shift in range(3)]
    return {
        "id": number,
        "slug": f"article-{number:02d}",
        "title": f"{title} (part {number})",
        "author": _AUTHORS[number % len(_AUTHORS)],
        "body": "\n\n".join(paragraphs),
        "tags": sorted({tag, "engineering" if number % 2 else "operations"}),
        "published_at": _iso(published),
        "updated_at": _iso(published + timedelta(days=number % 4, minutes=17 * number)),
    }


def build_articles() -> list[dict[str, Any]]:
    """The full catalogue: 42 generated articles and two hand-written ones."""
    articles = [_generated(number) for number in range(1, GENERATED_ARTICLES + 1)]
    articles.append(
        {
            "id": GENERATED_ARTICLES + 1,
            "slug": "hello-world",
            "title": "Hello, world",
            "author": "Ada Brennan",
            "body": "Welcome to the engineering blog. We write about the systems we run, "
            "the outages we learn from, and the tools we build along the way.",
            "tags": ["announcements"],
            "published_at": "2023-11-02T08:30:00Z",
            "updated_at": "2023-11-02T08:30:00Z",
        }
    )
    articles.append(
        {
            "id": GENERATED_ARTICLES + 2,
            "slug": "release-notes-2024",
            "title": "Release notes: what shipped in 2024",
            "author": "Mei Lindqvist",
            "body": "A faster sync worker, retries with jitter, per-upstream timeouts and a "
            "dashboard that finally shows cache hit rates.\n\nThanks to everyone who "
            "reported bugs.",
            "tags": ["announcements", "releases"],
            "published_at": "2024-12-30T16:00:00Z",
            "updated_at": "2025-01-06T10:12:00Z",
        }
    )
    return articles


def _last_modified(articles: list[dict[str, Any]]) -> str | None:
    """The newest `updated_at` of some articles as an HTTP date."""
    if not articles:
        return None
    newest = max(datetime.fromisoformat(article["updated_at"]) for article in articles)
    return http_date(newest.timestamp())


class Cms:
    """Serves the CMS routes from an article list the admin API can edit.

    Articles and pages carry an ETag (a hash of their bytes) and a Last-Modified (the
    newest `updated_at`), and answer a matching conditional GET with 304.
    """

    def __init__(self) -> None:
        self._original = build_articles()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        """Undo every change made through `change`."""
        with self._lock:
            self.articles = list(self._original)
            self._by_slug = {a["slug"]: Body(dump_json(a)) for a in self.articles}
            self._revisions: dict[str, int] = {}

    def article(self, request: Request, slug: str) -> Response:
        body = self._by_slug.get(slug)
        if body is None:
            return json_response(404, {"error": "not found"})
        updated = orjson.loads(body.raw)["updated_at"]
        modified = http_date(datetime.fromisoformat(updated).timestamp())
        return body_response(request, body, conditional=True, last_modified=modified)

    def change(self, slug: str) -> dict[str, Any] | None:
        """Edit an article (a revised title, `updated_at` now); None for an unknown slug."""
        with self._lock:
            index = next(
                (i for i, article in enumerate(self.articles) if article["slug"] == slug), None
            )
            if index is None:
                return None
            article = dict(self._original[index])
            revision = self._revisions.get(slug, 0) + 1
            self._revisions[slug] = revision
            article["title"] = f"{article['title']} (revision {revision})"
            article["updated_at"] = _iso(datetime.now(UTC).replace(microsecond=0))
            self.articles[index] = article
            body = self._by_slug[slug] = Body(dump_json(article))
        return {"slug": slug, "revision": revision, "etag": body.etag}

    def article_list(self, request: Request) -> Response:
        try:
            limit = query_int(request, "limit")
            offset = query_int(request, "offset")
        except ValueError:
            return json_response(400, {"error": "limit and offset must be integers"})
        limit = DEFAULT_LIMIT if limit is None else limit
        offset = 0 if offset is None else offset
        if limit < 1 or offset < 0:
            return json_response(400, {"error": "limit must be >= 1 and offset >= 0"})
        page = self.articles[offset : offset + min(limit, MAX_LIMIT)]
        body = Body(dump_json({"entities": page, "total": len(self.articles)}))
        return body_response(request, body, conditional=True, last_modified=_last_modified(page))
