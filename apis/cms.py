"""The headless CMS: articles by slug, and the article list by page."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from apis.client import ApiClient, Payload, expect
from apis.conditional import Validators
from apis.config import UpstreamSettings
from apis.paging import PageBudget
from apis.paths import page_window, segment

MAX_PAGE_SIZE = 100


class CmsSettings(UpstreamSettings):
    """The CMS's variables."""

    cms_base_url: str | None = None
    # Beat sends sync_articles this often (0: never).
    cms_sync_interval: float = Field(900.0, ge=0)


class CmsAPI(ApiClient):
    """Articles of the CMS; `total` in each page tells how far to page."""

    service = "cms"

    def probe(self) -> object:
        return self.get_articles(limit=1)

    def get(self, slug: str, *, validators: Validators | None = None) -> Payload:
        """One article by its slug (the seed's `CmsAPI.get`); may be `not_modified`."""
        path = f"/article/{segment(slug, name='slug', service=self.service)}"
        payload = self.fetch(path, validators=validators)
        if not payload.not_modified:
            expect(isinstance(payload.data, dict), "article is not an object", self, path)
        return payload

    def get_articles(self, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """One page: `{"entities": [...], "total": N}`."""
        data: dict[str, Any] = self.get_articles_page(limit, offset).data
        return data

    def get_articles_page(
        self, limit: int = 20, offset: int = 0, *, validators: Validators | None = None
    ) -> Payload:
        """One page with its validators; with the stored page's, it may be `not_modified`."""
        page_window(limit, offset, max_limit=MAX_PAGE_SIZE, service=self.service)
        payload = self.fetch(
            "/articles", params={"limit": limit, "offset": offset}, validators=validators
        )
        if payload.not_modified:
            return payload
        data = payload.data
        expect(
            isinstance(data, dict)
            and isinstance(data.get("entities"), list)
            and isinstance(data.get("total"), int),
            "article page lacks entities or total",
            self,
            "/articles",
        )
        return payload

    def get_all_articles(self, page_size: int = MAX_PAGE_SIZE) -> list[dict[str, Any]]:
        """Every article, page after page, until `total` is reached or a page is empty.

        Raises `PagingLimitExceeded` past PAGING_MAX_PAGES pages or PAGING_MAX_ITEMS
        articles: a `total` that keeps growing must not page forever.
        """
        budget = PageBudget(self.config, self.service, "/articles")
        articles: list[dict[str, Any]] = []
        while True:
            page = self.get_articles(limit=page_size, offset=len(articles))
            budget.take(len(page["entities"]))
            articles.extend(page["entities"])
            if not page["entities"] or len(articles) >= page["total"]:
                return articles
