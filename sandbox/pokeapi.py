"""PokeAPI v2 impersonation: `/api/v2/pokemon/{id or name}` and the paged index.

Sixteen records are real PokeAPI responses. Every other name in the 1351-entry index gets
a synthetic record cut from a real one, so clients see realistic sizes (16-560 KB) and
shapes everywhere, not just for the famous few. Records are stored with relative
`/api/v2/...` URLs; they are made absolute against the server's own address when a body
is first built, then the bytes are cached so a request costs no JSON encoding.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from sandbox.messages import (
    Body,
    Request,
    Response,
    body_response,
    dump_json,
    http_date,
    text_response,
)

SPRITE_URL = "https://raw.githubusercontent.com/PokeAPI/sprites/master/sprites/pokemon/{id}.png"
# The snapshot date of the stored records; a fixed value keeps Last-Modified stable.
LAST_MODIFIED = "Sat, 01 Mar 2025 00:00:00 GMT"
# What pokeapi.co sends with every record.
CACHE_CONTROL = "public, max-age=86400, s-maxage=86400"
DEFAULT_PAGE_LIMIT = 20
_LIST_CACHE_SIZE = 1024
# All 1351 bodies together take ~400 MB; a synthetic body rebuilds in about a millisecond,
# so only the most recently used ones are kept (the real records always are).
SYNTHETIC_CACHE_SIZE = 256
_ID_IN_URL = re.compile(r"/(\d+)/?$")
# With `small_bodies`, how much of each long list a record keeps: about 4 KB in all.
_SMALL_MOVES = 2
_SMALL_GAME_INDICES = 4


@dataclass(frozen=True)
class Catalogue:
    """The immutable data every server instance shares: the index and the real records."""

    names: tuple[str, ...]
    ids: tuple[int, ...]
    id_by_name: dict[str, int]
    name_by_id: dict[int, str]
    real: dict[int, bytes]

    @property
    def template_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.real))


@cache
def load_catalogue() -> Catalogue:
    """Read the packaged data once per process; every server shares it."""
    data = resources.files("sandbox") / "data"
    index = json.loads((data / "pokemon-index.json").read_bytes())
    names: list[str] = []
    ids: list[int] = []
    for entry in index["results"]:
        match = _ID_IN_URL.search(entry["url"])
        if match is None:
            raise ValueError(f"index entry without an id: {entry!r}")
        names.append(entry["name"])
        ids.append(int(match.group(1)))
    real: dict[int, bytes] = {}
    for item in (data / "pokemon").iterdir():
        if item.name.endswith(".json"):
            real[int(item.name.removesuffix(".json"))] = item.read_bytes()
    return Catalogue(
        names=tuple(names),
        ids=tuple(ids),
        id_by_name=dict(zip(names, ids, strict=True)),
        name_by_id=dict(zip(ids, names, strict=True)),
        real=real,
    )


class PokeApi:
    """Serves the PokeAPI routes for one server address, caching built bodies."""

    def __init__(
        self, base_url: str, catalogue: Catalogue | None = None, *, small_bodies: bool = False
    ) -> None:
        self.base_url = base_url
        self.catalogue = catalogue or load_catalogue()
        # The records every body is built from: the real ones, or cut to ~4 KB each.
        self._sources = (
            {key: small_record(raw) for key, raw in self.catalogue.real.items()}
            if small_bodies
            else self.catalogue.real
        )
        self._absolute_prefix = b'"' + base_url.encode() + b"/api/v2/"
        self._real_bodies: dict[int, Body] = {}
        self._synthetic_bodies: OrderedDict[int, Body] = OrderedDict()
        self._synthetic_lock = threading.Lock()
        self._templates: dict[int, dict[str, Any]] = {}
        self._pages: dict[tuple[int, int], Body] = {}
        self._cache_limit: int | None = SYNTHETIC_CACHE_SIZE
        # Records changed through the admin API: id -> (revision, body, Last-Modified).
        self._changed: dict[int, tuple[int, Body, str]] = {}
        self._changed_lock = threading.Lock()

    def prewarm(self) -> None:
        """Build and gzip every record now and keep them all (about 400 MB).

        For benchmarks: the real upstream's CPU is not on the worker's host, so the
        sandbox should cost as little per request as it can while it shares the cores.
        """
        self._cache_limit = None
        for pokemon_id in self.catalogue.name_by_id:
            self.record(pokemon_id).gzipped  # noqa: B018 (computed for its cache)

    def lookup(self, key: str) -> int | None:
        """The pokemon id for an id or an exact lower-case name, None when unknown."""
        if key.isascii() and key.isdigit():
            number = int(key)
            return number if number in self.catalogue.name_by_id else None
        return self.catalogue.id_by_name.get(key)

    def record(self, pokemon_id: int) -> Body:
        """The served body for a known id, built on first use."""
        changed = self._changed.get(pokemon_id)
        if changed is not None:
            return changed[1]
        return self._original(pokemon_id)

    def last_modified(self, pokemon_id: int) -> str:
        changed = self._changed.get(pokemon_id)
        return LAST_MODIFIED if changed is None else changed[2]

    def change(self, key: str) -> dict[str, Any] | None:
        """Edit a record as the upstream would (its weight grows by one per revision), so
        its ETag and Last-Modified change; None for an unknown key."""
        pokemon_id = self.lookup(key)
        if pokemon_id is None:
            return None
        with self._changed_lock:
            revision = self._changed.get(pokemon_id, (0, None, ""))[0] + 1
            record = json.loads(self._original(pokemon_id).raw)
            record["weight"] = int(record["weight"]) + revision
            body = Body(dump_json(record))
            modified = http_date(time.time())
            self._changed[pokemon_id] = (revision, body, modified)
        return {
            "id": pokemon_id,
            "name": self.catalogue.name_by_id[pokemon_id],
            "revision": revision,
            "etag": body.etag,
            "last_modified": modified,
        }

    def restore(self) -> None:
        """Undo every change made through `change`."""
        with self._changed_lock:
            self._changed.clear()

    def _original(self, pokemon_id: int) -> Body:
        real = self._sources.get(pokemon_id)
        if real is not None:
            body = self._real_bodies.get(pokemon_id)
            if body is None:
                body = self._real_bodies[pokemon_id] = self._absolute(real)
            return body
        with self._synthetic_lock:
            body = self._synthetic_bodies.get(pokemon_id)
            if body is not None:
                self._synthetic_bodies.move_to_end(pokemon_id)
                return body
        body = self._absolute(self._synthetic(pokemon_id))
        with self._synthetic_lock:
            self._synthetic_bodies[pokemon_id] = body
            while self._cache_limit is not None and len(self._synthetic_bodies) > self._cache_limit:
                self._synthetic_bodies.popitem(last=False)
        return body

    def _absolute(self, relative: bytes) -> Body:
        return Body(relative.replace(b'"/api/v2/', self._absolute_prefix))

    def pokemon(self, request: Request, key: str) -> Response:
        pokemon_id = self.lookup(key)
        if pokemon_id is None:
            return text_response(404, "Not Found")
        return body_response(
            request,
            self.record(pokemon_id),
            conditional=True,
            last_modified=self.last_modified(pokemon_id),
            headers=(("Cache-Control", CACHE_CONTROL),),
        )

    def pokemon_list(self, request: Request) -> Response:
        limit = _positive_int(request.query.get("limit"), DEFAULT_PAGE_LIMIT, strict=True)
        offset = _positive_int(request.query.get("offset"), 0, strict=False)
        return body_response(request, self._page(offset, limit), conditional=True)

    def _page(self, offset: int, limit: int) -> Body:
        body = self._pages.get((offset, limit))
        if body is None:
            if len(self._pages) >= _LIST_CACHE_SIZE:
                self._pages.clear()
            body = Body(dump_json(self._page_value(offset, limit)))
            self._pages[(offset, limit)] = body
        return body

    def _page_value(self, offset: int, limit: int) -> dict[str, Any]:
        """One page shaped like Django REST framework's limit/offset pagination."""
        count = len(self.catalogue.ids)
        url = f"{self.base_url}/api/v2/pokemon"
        next_url = None
        if offset + limit < count:
            next_url = f"{url}?{urlencode({'offset': offset + limit, 'limit': limit})}"
        previous_url = None
        if offset > 0:
            previous = max(offset - limit, 0)
            previous_url = f"{url}?{urlencode({'offset': previous, 'limit': limit})}"
        end = offset + limit
        results = [
            {"name": name, "url": f"{url}/{pokemon_id}/"}
            for name, pokemon_id in zip(
                self.catalogue.names[offset:end], self.catalogue.ids[offset:end], strict=True
            )
        ]
        return {"count": count, "next": next_url, "previous": previous_url, "results": results}

    def _synthetic(self, pokemon_id: int) -> bytes:
        """A real record re-labelled as another pokemon, keeping its size and shape.

        The template is chosen by id so the same name always gets the same bytes.
        """
        templates = self.catalogue.template_ids
        template = self._template(templates[pokemon_id % len(templates)])
        name = self.catalogue.name_by_id[pokemon_id]
        record = dict(template)
        record["id"] = pokemon_id
        record["name"] = name
        record["height"] = 2 + (pokemon_id * 7) % 40
        record["weight"] = 10 + (pokemon_id * 37) % 2000
        record["forms"] = [{"name": name, "url": f"/api/v2/pokemon-form/{pokemon_id}/"}]
        record["location_area_encounters"] = f"/api/v2/pokemon/{pokemon_id}/encounters"
        sprites = dict(template["sprites"])
        sprites["front_default"] = SPRITE_URL.format(id=pokemon_id)
        record["sprites"] = sprites
        return dump_json(record)

    def _template(self, template_id: int) -> dict[str, Any]:
        template = self._templates.get(template_id)
        if template is None:
            template = json.loads(self._sources[template_id])
            self._templates[template_id] = template
        return template


def small_record(raw: bytes) -> bytes:
    """A record of the same shape cut to about 4 KB (3 to 6 KB over the real ones).

    Every field stays; the long lists keep their first entries and the sprites their
    top-level URLs, so a client decodes the same structure with little payload, and a
    benchmark sees the per-job cost of the queue rather than of the body.
    """
    record = json.loads(raw)
    record["moves"] = [
        {**move, "version_group_details": move["version_group_details"][:1]}
        for move in record["moves"][:_SMALL_MOVES]
    ]
    record["game_indices"] = record["game_indices"][:_SMALL_GAME_INDICES]
    record["sprites"] = {
        key: value for key, value in record["sprites"].items() if not isinstance(value, dict)
    }
    return dump_json(record)


def _positive_int(value: str | None, default: int, *, strict: bool) -> int:
    """Parse like DRF: anything unusable (or zero, when strict) falls back to the default."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        return default
    if number < 0 or (strict and number == 0):
        return default
    return number
