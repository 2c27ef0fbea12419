"""PokeAPI v2 (public, no auth): https://pokeapi.co/docs/v2"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from apis.client import ApiClient, Payload, expect
from apis.config import ApiSettings, UpstreamConfig
from apis.paths import page_window, segment

MAX_PAGE_SIZE = 1000


class PokeAPI(ApiClient):
    """Pokémon records by name or id, and the paged index of every name."""

    service = "pokeapi"

    @classmethod
    def configure(cls, settings: ApiSettings) -> UpstreamConfig:
        return settings.upstream(
            cls.service,
            base_url=settings.pokeapi_base_url,
            base_url_setting="POKEAPI_BASE_URL",
        )

    def get_pokemon(self, name_or_id: str | int) -> Payload:
        """One full record; names are lower-case upstream, so callers normalise first."""
        path = f"/pokemon/{segment(name_or_id, name='name_or_id', service=self.service)}"
        payload = self.fetch(path)
        expect(isinstance(payload.data, dict), "pokemon record is not an object", self, path)
        return payload

    def list_pokemon(self, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """One page of the index: `{count, next, previous, results: [{name, url}]}`."""
        page_window(limit, offset, max_limit=MAX_PAGE_SIZE, service=self.service)
        return self._page("/pokemon", {"limit": limit, "offset": offset})

    def iter_all_pokemon(self, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Every `{name, url}` of the index, following the `next` links to the end."""
        page_window(page_size, 0, max_limit=MAX_PAGE_SIZE, service=self.service)
        page = self._page("/pokemon", {"limit": page_size, "offset": 0})
        while True:
            yield from page["results"]
            next_url = page.get("next")
            if not next_url:
                return
            page = self._page(next_url, None)

    def _page(self, path_or_url: str, params: dict[str, str | int] | None) -> dict[str, Any]:
        data = self.fetch(path_or_url, params=params).data
        expect(
            isinstance(data, dict)
            and isinstance(data.get("results"), list)
            and isinstance(data.get("count"), int),
            "index page lacks count or results",
            self,
            "/pokemon",
        )
        return dict(data)
