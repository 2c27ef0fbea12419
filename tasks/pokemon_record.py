"""PokeAPI's argument check and transform, pure: a Pokémon reference in, a summary out.

They belong to the PokeAPI upstream (its tasks are in `tasks/pokemon.py`) and live in a
module of their own because two more users need them without the tasks: the catalog's
batch path (`tasks/pokemon_catalog.py`, which `tasks/pokemon.py` imports) and the benchmark
baselines, which run the project's own transform without loading Celery or the API
layer (their memory is measured).
"""

from __future__ import annotations

import re
from typing import TypedDict

from tasks.errors import InvalidInput, InvalidPayload
from tasks.transforms import field, mapping, optional_str
from tasks.validation import text

MAX_BATCH = 500
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


class PokemonSummary(TypedDict):
    id: int
    name: str
    image: str | None
    height: str
    weight: str


def pokemon_ref(value: object) -> str:
    """A Pokémon name (case-insensitive) or a positive id, normalised to what PokeAPI uses."""
    ref = text(value, "name_or_id").lower()
    if ref.isascii() and ref.isdigit():  # "²".isdigit() is True, int("²") fails
        number = int(ref)
        if number < 1:
            raise InvalidInput("a Pokémon id must be a positive integer")
        return str(number)
    if isinstance(value, int) or not _NAME.fullmatch(ref):
        raise InvalidInput(
            "name_or_id may hold only letters, digits and '-' and must not start with '-': "
            f"{ref[:40]!r}"
        )
    return ref


def pokemon_batch(value: object) -> list[str]:
    """A list of 1..500 Pokémon names or ids, each checked as `pokemon_ref`."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("names must be a non-empty list")
    if len(value) > MAX_BATCH:
        raise InvalidInput(f"names must hold at most {MAX_BATCH} entries, got {len(value)}")
    return [pokemon_ref(item) for item in value]


def js_number(value: float) -> str:
    """Print a number as JavaScript does: 170.0 is "170", 90.5 is "90.5"."""
    if value == int(value):
        return str(int(value))
    return repr(float(value))


def pokemon_summary(record: object) -> PokemonSummary:
    """PokeAPI record → `{id, name, image, height: "170 cm", weight: "90.5 kg"}`.

    PokeAPI gives height in decimetres and weight in hectograms.
    """
    payload = mapping(record, "pokemon record")
    pokemon_id = field(payload, "id", int)
    name = field(payload, "name", str)
    height = field(payload, "height", int)
    weight = field(payload, "weight", int)
    if pokemon_id < 1 or not name:
        raise InvalidPayload("pokemon record has an empty name or a non-positive id")
    if height < 0 or weight < 0:
        raise InvalidPayload("pokemon height and weight must not be negative")
    sprites = mapping(payload.get("sprites"), "field 'sprites'")
    return {
        "id": pokemon_id,
        "name": name,
        "image": optional_str(sprites, "front_default"),
        "height": f"{js_number(height * 10)} cm",
        "weight": f"{js_number(weight / 10)} kg",
    }
