"""The bound on one paged walk: pages fetched and items taken, per walk.

An upstream decides how far a walk goes (a `next` link, a `total`, a `Link` header), so
a hostile or broken one could make it endless: 2,037,501 names from 4,076 pages in 5 s.
Every pager of the API layer counts its walk here and stops with `PagingLimitExceeded`,
naming the setting, once it passes PAGING_MAX_PAGES or PAGING_MAX_ITEMS.
"""

from __future__ import annotations

from apis.config import UpstreamConfig
from apis.errors import PagingLimitExceeded


class PageBudget:
    """Counts one walk's pages and items against its upstream's limits."""

    def __init__(self, config: UpstreamConfig, service: str, path: str) -> None:
        self._max_pages = config.max_pages
        self._max_items = config.max_items
        self._service = service
        self._path = path
        self.pages = 0
        self.items = 0

    def take(self, items: int) -> None:
        """Count one page of `items`; raises `PagingLimitExceeded` past either limit."""
        self.pages += 1
        self.items += items
        if self.pages > self._max_pages:
            raise PagingLimitExceeded(
                f"more than {self._max_pages} pages (PAGING_MAX_PAGES)",
                self._service,
                "GET",
                self._path,
            )
        if self.items > self._max_items:
            raise PagingLimitExceeded(
                f"more than {self._max_items} items (PAGING_MAX_ITEMS)",
                self._service,
                "GET",
                self._path,
            )
