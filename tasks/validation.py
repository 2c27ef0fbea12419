"""Job arguments are checked before anything else: no upstream call, no retry.

Producers are other services sending JSON; a wrong type, an empty or over-long value, or
a character that has no business in a URL is refused here with a message that says why.
"""

from __future__ import annotations

import re

from tasks.errors import InvalidInput

MAX_LENGTH = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def _text(value: object, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise InvalidInput(f"{field} must not be empty")
    if len(text) > MAX_LENGTH:
        raise InvalidInput(f"{field} must be at most {MAX_LENGTH} characters, got {len(text)}")
    return text


def pokemon_ref(value: object) -> str:
    """A Pokémon name (case-insensitive) or a positive id, normalised to what PokeAPI uses."""
    text = _text(value, "name_or_id").lower()
    if text.isascii() and text.isdigit():  # "²".isdigit() is True, int("²") fails
        number = int(text)
        if number < 1:
            raise InvalidInput("a Pokémon id must be a positive integer")
        return str(number)
    if isinstance(value, int) or not _NAME.fullmatch(text):
        raise InvalidInput(
            "name_or_id may hold only letters, digits and '-' and must not start with '-': "
            f"{text[:40]!r}"
        )
    return text


def slug(value: object) -> str:
    """A CMS article slug: lower-case letters, digits, '-' and '_'."""
    text = _text(value, "slug")
    if not _SLUG.fullmatch(text):
        raise InvalidInput(
            f"slug may hold only lower-case letters, digits, '-' and '_': {text[:40]!r}"
        )
    return text


def project_id(value: object) -> str:
    """A Semaphore project id (a UUID in practice)."""
    text = _text(value, "project_id")
    if not _PROJECT_ID.fullmatch(text):
        raise InvalidInput(f"project_id may hold only letters, digits and '-': {text[:40]!r}")
    return text


MAX_BATCH = 500


def pokemon_batch(value: object) -> list[str]:
    """A list of 1..500 Pokémon names or ids, each checked as `pokemon_ref`."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("names must be a non-empty list")
    if len(value) > MAX_BATCH:
        raise InvalidInput(f"names must hold at most {MAX_BATCH} entries, got {len(value)}")
    return [pokemon_ref(item) for item in value]
