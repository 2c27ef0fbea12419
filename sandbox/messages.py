"""Plain values passed between the HTTP handler and the impersonated APIs.

The fake APIs never touch sockets: they turn a `Request` into a `Response`. That keeps
them easy to reason about and lets the handler decide how (or whether, under a fault)
the bytes go out.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import orjson

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request; header names are lower-case."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def accepts_gzip(self) -> bool:
        for part in (self.header("accept-encoding") or "").split(","):
            coding, *params = (item.strip() for item in part.split(";"))
            if coding.lower() not in ("gzip", "*"):
                continue
            quality = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(value)
                    except ValueError:
                        quality = 0.0
            return quality > 0
        return False


@dataclass(frozen=True)
class Response:
    """Status, extra headers and the exact body bytes to send (Content-Length is derived)."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


class Body:
    """Encoded JSON built once and served many times.

    Benchmarks hit the same few records thousands of times, so the gzip form and the
    ETag are computed on first use and kept. Two threads may race to fill them; both
    compute the same bytes, so the race is harmless and cheaper than a lock.
    """

    __slots__ = ("_etag", "_gzipped", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._gzipped: bytes | None = None
        self._etag: str | None = None

    @property
    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.raw, compresslevel=6, mtime=0)
        return self._gzipped

    @property
    def etag(self) -> str:
        if self._etag is None:
            self._etag = '"' + hashlib.blake2b(self.raw, digest_size=16).hexdigest() + '"'
        return self._etag


def dump_json(value: Any) -> bytes:
    """Compact JSON, as the live APIs send it."""
    return orjson.dumps(value)


def json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, dump_json(value), JSON_TYPE, headers)


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode(), TEXT_TYPE)


def body_response(
    request: Request,
    body: Body,
    *,
    conditional: bool = False,
    last_modified: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """Serve a cached body, gzipped when the client asks, as PokeAPI's CDN does.

    With `conditional`, the ETag (and `last_modified`, when given) are sent, and a
    request they match (`not_modified`) gets a 304 with the same headers and no body.
    """
    extra: list[tuple[str, str]] = [("Vary", "Accept-Encoding"), *headers]
    if conditional:
        extra.append(("ETag", body.etag))
        if last_modified is not None:
            extra.append(("Last-Modified", last_modified))
        if not_modified(request, body.etag, last_modified):
            return Response(304, b"", None, tuple(extra))
    if request.accepts_gzip:
        extra.append(("Content-Encoding", "gzip"))
        return Response(200, body.gzipped, JSON_TYPE, tuple(extra))
    return Response(200, body.raw, JSON_TYPE, tuple(extra))


def not_modified(request: Request, etag: str, last_modified: str | None) -> bool:
    """Whether a conditional GET matches the current representation (RFC 9110 13.1).

    `If-None-Match` is compared weakly (`W/"x"` matches `"x"`), `*` matches anything,
    and when it is present `If-Modified-Since` is ignored, as the RFC asks.
    """
    if_none_match = request.header("if-none-match")
    if if_none_match is not None:
        tags = {_opaque(tag) for tag in if_none_match.split(",")}
        return "*" in tags or _opaque(etag) in tags
    if_modified_since = request.header("if-modified-since")
    if if_modified_since is None or last_modified is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
        modified = parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False  # an unparsable date is ignored, as the RFC says
    return modified <= since


def _opaque(tag: str) -> str:
    """An entity tag without its weakness marker, for the weak comparison."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def http_date(epoch_seconds: float) -> str:
    """An IMF-fixdate, as Last-Modified carries it."""
    return formatdate(epoch_seconds, usegmt=True)


def query_int(request: Request, name: str) -> int | None:
    """The query parameter as an int, None when absent; ValueError when not an integer."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    return int(value)
