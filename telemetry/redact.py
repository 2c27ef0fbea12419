"""Keep secrets out of logs, error messages and stored records.

Credentials only ever travel in request headers, but an upstream may echo them back in
an error body, so every excerpt and log message built from upstream data passes here.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` masks it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return `text` with every registered secret replaced by a mask."""
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def excerpt(body: bytes | str, limit: int = 200) -> str:
    """A short, single-line, redacted excerpt of a body for error messages."""
    head = body[: limit * 4]  # never decode a whole 300 KB body for a 200-character excerpt
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    text = " ".join(text.split())
    return redact(text)[:limit]
