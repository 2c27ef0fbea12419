"""Safe path parameters.

Values from job arguments end up inside upstream URLs. A value such as `../admin`,
`a/b`, `x?y=1` or `%2e%2e` could reach another endpoint, so a path segment is checked
against a strict pattern before any request is made, then percent-encoded anyway.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from apis.errors import InvalidParameter

MAX_SEGMENT_LENGTH = 100
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*")


def segment(value: str | int, *, name: str = "parameter", service: str = "") -> str:
    """Return `value` as one URL path segment, or raise `InvalidParameter`."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidParameter(f"{name} must be a string or an integer", service)
    text = str(value)
    if not text:
        raise InvalidParameter(f"{name} must not be empty", service)
    if len(text) > MAX_SEGMENT_LENGTH:
        raise InvalidParameter(f"{name} is longer than {MAX_SEGMENT_LENGTH} characters", service)
    if not _SEGMENT.fullmatch(text) or ".." in text:
        raise InvalidParameter(
            f"{name} may hold only letters, digits, '.', '_', '~' and '-' "
            f"and must start with a letter or digit: {text[:40]!r}",
            service,
        )
    return quote(text, safe="")


def page_window(limit: int, offset: int, *, max_limit: int, service: str = "") -> None:
    """Check `limit`/`offset` query values before they reach an upstream."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise InvalidParameter(f"limit must be an integer in 1..{max_limit}", service)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidParameter("offset must be a non-negative integer", service)
