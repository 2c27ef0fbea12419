"""Job arguments are checked before anything else: no upstream call, no retry.

Producers are other services sending JSON; a wrong type, an empty or over-long value, or
a character that has no business in a URL is refused here with a message that says why.
Each upstream checks its own arguments with its tasks (`tasks/<upstream>.py`); the
checks every upstream may use are here.
"""

from __future__ import annotations

import re

from tasks.errors import InvalidInput

MAX_LENGTH = 100
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")


def text(value: object, field: str) -> str:
    """A non-empty string of at most MAX_LENGTH characters (an int is taken as its digits)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__}")
    found = str(value)
    if not found:
        raise InvalidInput(f"{field} must not be empty")
    if len(found) > MAX_LENGTH:
        raise InvalidInput(f"{field} must be at most {MAX_LENGTH} characters, got {len(found)}")
    return found


def matching(value: object, field: str, pattern: re.Pattern[str], allowed: str) -> str:
    """`text(value)`, which must match `pattern` in full (`allowed` says what it holds)."""
    found = text(value, field)
    if not pattern.fullmatch(found):
        raise InvalidInput(f"{field} may hold only {allowed}: {found[:40]!r}")
    return found


def slug(value: object) -> str:
    """A slug (an article's, a city's): lower-case letters, digits, '-' and '_'."""
    return matching(value, "slug", _SLUG, "lower-case letters, digits, '-' and '_'")
