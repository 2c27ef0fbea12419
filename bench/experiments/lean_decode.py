"""What-if: decode only the five fields the transform reads from a Pokémon record.

`orjson.loads` builds the whole ~260 KB record as Python objects (tens of thousands of
dicts and lists) only for `pokemon_summary` to read id, name, height, weight and one
sprite URL; building, garbage-collecting and freeing that tree is most of a job's CPU.
A typed msgspec decoder skips everything else without allocating it. The change in the
product would be an optional per-call decoder in `ApiClient.fetch` (used by
`PokeAPI.get_pokemon`) and msgspec as a dependency; a body that does not match the
type falls back to the full decode here, so malformed records still fail exactly as
before (`InvalidPayload` from the transform).

msgspec is not a project dependency: `pip install msgspec` into the venv to run this.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import requests

from apis.client import ApiClient, Payload
from apis.pokeapi import PokeAPI
from worker.app import app

msgspec: Any = importlib.import_module("msgspec")
_RECORD_PATH = re.compile(r".*/pokemon/[^/]+/?")


class _Sprites(msgspec.Struct):  # type: ignore[misc]
    front_default: str | None = None


class _Record(msgspec.Struct):  # type: ignore[misc]
    id: int
    name: str
    height: int
    weight: int
    sprites: _Sprites


_decoder = msgspec.json.Decoder(_Record)
_full_decode = ApiClient._decode


def _lean_decode(
    self: ApiClient, response: requests.Response, body: bytes, method: str, path: str
) -> Payload:
    if not _RECORD_PATH.fullmatch(path):
        return _full_decode(self, response, body, method, path)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _full_decode(self, response, body, method, path)
    try:
        record = _decoder.decode(body)
    except msgspec.DecodeError:  # includes ValidationError: let the full path report it
        return _full_decode(self, response, body, method, path)
    data = {
        "id": record.id,
        "name": record.name,
        "height": record.height,
        "weight": record.weight,
        "sprites": {"front_default": record.sprites.front_default},
    }
    return Payload(
        data=data,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
    )


PokeAPI._decode = _lean_decode  # type: ignore[method-assign]

__all__ = ["app"]
