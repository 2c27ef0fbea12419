"""PokeAPI v2 (public, no auth): https://pokeapi.co/docs/v2

A Pokémon record is 16-560 KB of JSON (charizard ~305 KB), nearly all of it moves and
game versions. Decoding it whole builds tens of thousands of objects, which was half a
job's CPU; `get_pokemon` therefore decodes, with msgspec, only the fields this service
uses. A record of the wrong shape is refused with msgspec's own account of what is
wrong (`Object missing required field `id``), never decoded a second time whole: a
`[{}, {}, ...]` body would build millions of objects (387 MB for 10 MB).
`full=True` returns the whole record.

Paged walks stop at PAGING_MAX_PAGES pages or PAGING_MAX_ITEMS names
(`PagingLimitExceeded`), and follow `next` only below the base URL (`ApiClient.follow`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import orjson

from apis.client import ApiClient, Payload, expect
from apis.conditional import Validators
from apis.config import (
    POKEAPI_INDEX_PAGE_MAX_BYTES,
    POKEAPI_RECORD_MAX_BYTES,
)
from apis.paging import PageBudget
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
    """The used fields as plain data; ValueError naming what is wrong for any other body."""
    try:
        return msgspec.to_builtins(_record_decoder.decode(body))
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a pokemon record: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


class PokeAPI(ApiClient):
    """Pokémon records by name or id, and the paged index of every name."""

    service = "pokeapi"

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
            path,
            decode=orjson.loads if full else decode_record_fields,
            validators=validators,
            max_bytes=POKEAPI_RECORD_MAX_BYTES,
        )
        if not payload.not_modified:
            expect(isinstance(payload.data, dict), "pokemon record is not an object", self, path)
        return payload

    def list_pokemon(self, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """One page of the index: `{count, next, previous, results: [{name, url}]}`."""
        page_window(limit, offset, max_limit=MAX_PAGE_SIZE, service=self.service)
        return self._page("/pokemon", {"limit": limit, "offset": offset})

    def iter_all_pokemon(self, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Every `{name, url}` of the index, following the `next` links to the end.

        Raises `PagingLimitExceeded` past PAGING_MAX_PAGES pages or PAGING_MAX_ITEMS
        names, and `InvalidResponse` for a `next` that is not a URL below the base.
        """
        page_window(page_size, 0, max_limit=MAX_PAGE_SIZE, service=self.service)
        budget = PageBudget(self.config, self.service, "/pokemon")
        page = self._page("/pokemon", {"limit": page_size, "offset": 0})
        while True:
            budget.take(len(page["results"]))
            yield from page["results"]
            next_url = page.get("next")
            if next_url is None or next_url == "":
                return
            page = self._page(self.follow(next_url, where="/pokemon"), None)

    def _page(self, path_or_url: str, params: dict[str, str | int] | None) -> dict[str, Any]:
        data = self.fetch(path_or_url, params=params, max_bytes=POKEAPI_INDEX_PAGE_MAX_BYTES).data
        expect(
            isinstance(data, dict)
            and isinstance(data.get("results"), list)
            and isinstance(data.get("count"), int),
            "index page lacks count or results",
            self,
            "/pokemon",
        )
        return dict(data)
