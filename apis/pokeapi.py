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
from typing import Annotated, Any

import msgspec
import orjson
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from apis.client import ApiClient, Payload, expect
from apis.conditional import Validators
from apis.config import UpstreamSettings
from apis.paging import PageBudget
from apis.paths import page_window, segment

MAX_PAGE_SIZE = 1000
# Per-endpoint body caps, from what the upstream's records really are: the largest real
# PokeAPI record (mew) is 559 KB, an index page of 1000 names ~75 KB. Each is about
# twice the largest seen, and never above HTTP_MAX_RESPONSE_BYTES.
POKEAPI_RECORD_MAX_BYTES = 1024 * 1024
POKEAPI_INDEX_PAGE_MAX_BYTES = 256 * 1024


class PokeAPISettings(UpstreamSettings):
    """PokeAPI's variables, and those of its catalog refresh (tasks/pokemon.py)."""

    pokeapi_base_url: str | None = "https://pokeapi.co/api/v2"
    # The names beat's refresh_catalog fetches, every POKEMON_REFRESH_INTERVAL seconds
    # (0: never).
    pokemon_catalog: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["bulbasaur", "charizard", "pikachu", "mewtwo", "mew"]
    )
    pokemon_refresh_interval: float = Field(3600.0, ge=0)
    # refresh_catalog sends this many names per job (0: one fetch_pokemon job per name),
    # each job fetching up to CATALOG_BATCH_CONCURRENCY of them at once.
    catalog_batch_size: int = Field(50, ge=0, le=500)
    catalog_batch_concurrency: int = Field(8, ge=1, le=64)

    @field_validator("pokemon_catalog", mode="before")
    @classmethod
    def _split_catalog(cls, value: object) -> object:
        """`POKEMON_CATALOG` is a comma-separated list, or `*` for the whole index."""
        if isinstance(value, str):
            return [name.strip().lower() for name in value.split(",") if name.strip()]
        return value

    @property
    def whole_catalog(self) -> bool:
        return self.pokemon_catalog == ["*"]


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
