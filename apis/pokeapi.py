"""PokeAPI v2 (public, no auth): https://pokeapi.co/docs/v2

A Pokémon record is 16-560 KB of JSON (charizard ~305 KB), nearly all of it moves and
game versions. Decoding it whole builds tens of thousands of objects, which was half a
job's CPU; `get_pokemon` therefore decodes, with msgspec, only the fields this service
uses, and hands a record of the wrong shape to orjson whole, so the caller's validation
names what is wrong. `full=True` returns the whole record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import orjson

from apis.client import ApiClient, Payload, expect
from apis.conditional import Validators
from apis.config import ApiSettings, UpstreamConfig
from apis.paths import page_window, segment

MAX_PAGE_SIZE = 1000


class _Sprites(msgspec.Struct):
    front_default: str | None = None


class _RecordFields(msgspec.Struct):
    """The fields of a record the service reads; msgspec skips the rest unparsed."""

    id: int
    name: str
    height: int
    weight: int
    sprites: _Sprites


_record_decoder = msgspec.json.Decoder(_RecordFields)


def decode_record_fields(body: bytes) -> Any:
    """The used fields as plain data; a record of another shape is decoded whole."""
    try:
        return msgspec.to_builtins(_record_decoder.decode(body))
    except msgspec.ValidationError:
        return orjson.loads(body)  # valid JSON, unexpected shape: let the caller say why
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc


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

    def probe(self) -> object:
        return self.list_pokemon(limit=1)

    def get_pokemon(
        self, name_or_id: str | int, *, full: bool = False, validators: Validators | None = None
    ) -> Payload:
        """One record (id, name, height, weight, sprites.front_default unless `full`).

        Names are lower-case upstream, so callers normalise first. With the stored
        copy's `validators` the answer may be `not_modified` (no data).
        """
        path = f"/pokemon/{segment(name_or_id, name='name_or_id', service=self.service)}"
        payload = self.fetch(
            path, decode=orjson.loads if full else decode_record_fields, validators=validators
        )
        if not payload.not_modified:
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
