"""What every upstream's transform needs to read a payload: typed fields or a typed error.

A transform is a pure function from an upstream payload to the small shape the results
contract documents, declared with its upstream (`tasks/<upstream>.py`, as a new upstream
declares its own). These helpers raise `InvalidPayload` (never KeyError or TypeError)
when the payload lacks what a transform needs, so a malformed upstream body is a typed,
permanent failure whichever upstream sent it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.errors import InvalidPayload


def field(payload: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`payload[key]`, which must be of `kind` (a bool is not an int here)."""
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidPayload(f"field {key!r} must be {expected}, got {type(value).__name__}")
    return value


def optional_str(payload: Mapping[str, Any], key: str) -> str | None:
    """`payload[key]` as a string, None when missing or empty."""
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def mapping(value: object, what: str) -> Mapping[str, Any]:
    """`value`, which must be a JSON object (`what` names it in the error)."""
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"{what} must be an object, got {type(value).__name__}")
    return value
