"""Conditional requests: the validators a fetch sends, and what a `304` answer means.

A caller that holds a stored copy passes its validators (the `ETag` and `Last-Modified`
the upstream sent with it); the request then carries `If-None-Match` and
`If-Modified-Since`, and a `304 Not Modified` comes back as a `Payload` with
`not_modified=True` and no data: the stored copy is still good. As in HTTP caches
(requests-cache, hishel), a 304 is never an error and never a body.

The upstream's `Cache-Control` is read here too, so a caller may let its freshness
window follow the upstream's own (`freshness_lifetime`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# A header value we are willing to send back: visible ASCII and spaces, bounded. A
# stored validator outside this (a tampered key, a hostile upstream) is not sent, so the
# fetch simply becomes unconditional instead of failing or smuggling a header.
_SAFE_VALUE = re.compile(r"[\x20-\x7e]{1,1024}")
_DIRECTIVE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*\"?(\d+)\"?)?\s*")


@dataclass(frozen=True)
class Validators:
    """What identifies a stored copy to its upstream; empty when nothing is stored."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return bool(self.headers())

    def headers(self) -> dict[str, str]:
        """`If-None-Match` (the ETag as stored, weak or strong) and `If-Modified-Since`."""
        headers: dict[str, str] = {}
        if self.etag and _SAFE_VALUE.fullmatch(self.etag):
            headers["If-None-Match"] = self.etag
        if self.last_modified and _SAFE_VALUE.fullmatch(self.last_modified):
            headers["If-Modified-Since"] = self.last_modified
        return headers


def with_validators(headers: dict[str, str], validators: Validators | None) -> dict[str, str]:
    """The request headers plus the conditional ones (the same dict when there are none)."""
    conditional = validators.headers() if validators is not None else {}
    return {**headers, **conditional} if conditional else headers


def sent_validators(headers: Mapping[str, str]) -> Validators:
    """The validators a request carried (empty for an unconditional one)."""
    return Validators(headers.get("If-None-Match"), headers.get("If-Modified-Since"))


def freshness_lifetime(headers: Mapping[str, str]) -> float | None:
    """Seconds the answer stays fresh by its `Cache-Control`, None when it says nothing.

    As a shared cache reads it (RFC 9111 section 4.2.1): `s-maxage` over `max-age`,
    `no-store` / `no-cache` mean 0, and the `Age` the answer already had is subtracted.
    """
    value = headers.get("Cache-Control")
    if not value:
        return None
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        match = _DIRECTIVE.fullmatch(part)
        if match is not None:
            directives[match.group(1).lower()] = match.group(2)
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    seconds = directives.get("s-maxage") or directives.get("max-age")
    if seconds is None:
        return None
    age = headers.get("Age", "")
    already = int(age) if age.isascii() and age.isdigit() else 0
    return float(max(0, int(seconds) - already))
