"""Fault injection: what can go wrong with an upstream, and when it should.

A fault is queued on a route and applies to a number of requests, or to a random share
of them. Faults that are only a different response (a 503, a 429, bad JSON) are built
here; faults that misbehave on the wire (hangs, resets, truncation, slow bodies, slow
headers and chunk framing, floods, endless streams) are carried out by the HTTP handler,
which owns the socket.

The hostile kinds show what an attacker-controlled upstream can try: `slow_headers` and
`slow_chunks` drip the head or a chunk-size line a byte per `interval`; `trailer_flood`
sends trailer lines without end; `encoding` stacks Content-Encodings (`gzip, gzip`, or
one the client never asked for); `deflate_padding` is a deflate stream of empty blocks
that inflates to nothing; `next_link` points the page's `next` and `Link` at `link`;
`deep_json` nests `depth` arrays; `endless_paging` makes every page full and never last;
`header_flood` sends `count` header lines.
"""

from __future__ import annotations

import enum
import gzip
import random
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import orjson

from sandbox.messages import JSON_TYPE, Request, Response, json_response, query_int

KINDS = (
    "status",
    "rate_limited",
    "unauthorized",
    "latency",
    "hang",
    "reset",
    "malformed_json",
    "wrong_content_type",
    "truncated",
    "wrong_shape",
    "redirect",
    "huge",
    "slow_drip",
    "slow_headers",
    "slow_chunks",
    "trailer_flood",
    "encoding",
    "deflate_padding",
    "next_link",
    "deep_json",
    "endless_paging",
    "header_flood",
)

# Parameters each kind accepts, with their defaults.
_DEFAULTS: dict[str, dict[str, int | float | str]] = {
    "status": {"status": 500},
    "rate_limited": {"retry_after": 1},
    "unauthorized": {},
    "latency": {"seconds": 1.0},
    "hang": {"seconds": 30.0},
    "reset": {},
    "malformed_json": {},
    "wrong_content_type": {},
    "truncated": {},
    "wrong_shape": {"shape": "list"},
    "redirect": {"location": "http://example.invalid/elsewhere", "status": 302},
    "huge": {"size": 20 * 1024 * 1024},
    "slow_drip": {"interval": 0.5, "encodings": ""},
    "slow_headers": {"interval": 0.5},
    "slow_chunks": {"interval": 0.5},
    "trailer_flood": {"seconds": 30.0},
    "encoding": {"encodings": "gzip, gzip", "status": 200},
    "deflate_padding": {"size": 64 * 1024 * 1024},
    "next_link": {"link": "http://example.invalid/steal"},
    "deep_json": {"depth": 100_000},
    "endless_paging": {},
    "header_flood": {"count": 1000},
}
# A zlib header, then empty stored blocks (BFINAL=0, BTYPE=00, LEN=0, NLEN=0xffff).
DEFLATE_HEADER = b"\x78\x9c"
EMPTY_DEFLATE_BLOCK = b"\x00\x00\x00\xff\xff"
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
}
_HUGE_PREFIX = b'{"padding":"'
_HUGE_SUFFIX = b'"}'
MALFORMED_BODY = b'{"id": 6, "name": '


class Unset(enum.Enum):
    """Marks an argument the caller did not pass (where None already means something)."""

    TOKEN = enum.auto()


UNSET = Unset.TOKEN


@dataclass(frozen=True)
class Fault:
    """One kind of misbehaviour with its parameters, validated at injection time."""

    kind: str
    status: int = 500
    retry_after: int = 1
    seconds: float = 0.0
    shape: str = "list"
    location: str = ""
    size: int = 0
    interval: float = 0.5
    link: str = ""
    encodings: str = ""
    depth: int = 0
    count: int = 0

    @classmethod
    def build(cls, kind: str, params: Mapping[str, object]) -> Fault:
        """Validate `params` for `kind`; raises ValueError on anything unusable."""
        defaults = _DEFAULTS.get(kind)
        if defaults is None:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(params) - set(defaults)
        if unknown:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"{kind} takes no {', '.join(sorted(unknown))} (allowed: {allowed})")
        values = {**defaults, **params}
        fault = cls(
            kind=kind,
            status=_integer(values, "status", 500),
            retry_after=_integer(values, "retry_after", 1),
            seconds=_number(values, "seconds", 0.0),
            shape=str(values.get("shape", "list")),
            location=str(values.get("location", "")),
            size=_integer(values, "size", 0),
            interval=_number(values, "interval", 0.5),
            link=str(values.get("link", "")),
            encodings=str(values.get("encodings", "")),
            depth=_integer(values, "depth", 0),
            count=_integer(values, "count", 0),
        )
        fault._check()
        return fault

    def _check(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status}")
        if self.retry_after < 0 or self.seconds < 0:
            raise ValueError("retry_after and seconds must not be negative")
        if self.shape not in ("list", "object"):
            raise ValueError(f"shape must be 'list' or 'object', got {self.shape!r}")
        if self.kind == "huge" and self.size < len(_HUGE_PREFIX) + len(_HUGE_SUFFIX):
            raise ValueError(f"huge needs size >= {len(_HUGE_PREFIX) + len(_HUGE_SUFFIX)}")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.depth < 0 or self.count < 0 or self.size < 0:
            raise ValueError("depth, count and size must not be negative")

    def canned_response(self) -> Response | None:
        """The replacement response for kinds that are just a different answer."""
        if self.kind == "status":
            if self.status in (204, 304):  # statuses that never carry a body
                return Response(self.status, b"", None)
            return json_response(self.status, {"error": f"injected status {self.status}"})
        if self.kind == "rate_limited":
            return json_response(
                429, {"error": "rate limited"}, (("Retry-After", str(self.retry_after)),)
            )
        if self.kind == "unauthorized":
            return json_response(401, {"message": "Unauthorized"})
        if self.kind == "malformed_json":
            return Response(200, MALFORMED_BODY, JSON_TYPE)
        if self.kind == "wrong_content_type":
            html = b"<!DOCTYPE html><html><body><h1>Maintenance</h1></body></html>"
            return Response(200, html, "text/html; charset=utf-8")
        if self.kind == "wrong_shape":
            return json_response(200, [1, 2, 3] if self.shape == "list" else {"unexpected": True})
        if self.kind == "redirect":
            return Response(self.status, b"", None, (("Location", self.location),))
        if self.kind == "deep_json":
            return Response(200, b'{"x":' + b"[" * self.depth + b"]" * self.depth + b"}")
        if self.kind == "header_flood":
            flood = tuple((f"X-Flood-{n}", "x") for n in range(self.count))
            return Response(200, b"{}", JSON_TYPE, flood)
        return None

    def encoded(self, response: Response, status: int | None = None) -> Response:
        """`response` (sent unencoded) under the `encodings` stack, applied in order, with
        `status` if given; a coding the sandbox does not know is named but not applied."""
        body = response.body
        for coding in (c.strip() for c in self.encodings.split(",")):
            encode = _ENCODERS.get(coding.lower())
            if encode is not None:
                body = encode(body)
        headers = tuple(h for h in response.headers if h[0].lower() != "content-encoding")
        return Response(
            response.status if status is None else status,
            body,
            response.content_type,
            (*headers, ("Content-Encoding", self.encodings)),
        )

    def deflate_padding(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """`size` bytes of a deflate stream that never produces a byte of output."""
        yield DEFLATE_HEADER
        batch = EMPTY_DEFLATE_BLOCK * (chunk_size // len(EMPTY_DEFLATE_BLOCK))
        for _ in range(max(1, self.size // len(batch))):
            yield batch

    def with_next_link(self, response: Response) -> Response:
        """`response` with its JSON `next` (if it has one) and a `Link` header at `link`."""
        body = response.body
        if body.startswith(b"{") and b'"next"' in body:
            value = orjson.loads(body)
            value["next"] = self.link
            body = orjson.dumps(value)
        headers = tuple(h for h in response.headers if h[0].lower() not in ("link",))
        return Response(
            response.status,
            body,
            response.content_type,
            (*headers, ("Link", f'<{self.link}>; rel="next"')),
        )

    def huge_body(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """A `huge` body of exactly `size` bytes of valid JSON, produced in chunks."""
        yield _HUGE_PREFIX
        padding = self.size - len(_HUGE_PREFIX) - len(_HUGE_SUFFIX)
        chunk = b"x" * chunk_size
        while padding > 0:
            yield chunk[: min(padding, chunk_size)]
            padding -= chunk_size
        yield _HUGE_SUFFIX


def endless_page(route: str, request: Request, base_url: str) -> Response:
    """A page of `route` that is full and always has a next one (`count` and `total`
    grow with it), as a broken or hostile paged API might answer for ever."""
    try:
        limit = min(query_int(request, "limit") or 20, 1000)
        offset = query_int(request, "offset") or 0
        page = query_int(request, "page") or 1
    except ValueError:
        limit, offset, page = 20, 0, 1
    if route == "pokemon_list":
        names = [f"mon-{offset + n}" for n in range(limit)]
        url = f"{base_url}/api/v2/pokemon"
        return json_response(
            200,
            {
                "count": offset + limit + 1,
                "next": f"{url}?offset={offset + limit}&limit={limit}",
                "previous": None,
                "results": [{"name": name, "url": f"{url}/{name}/"} for name in names],
            },
        )
    if route == "articles":
        entities = [{"slug": f"article-{offset + n}", "title": "t"} for n in range(limit)]
        return json_response(200, {"entities": entities, "total": offset + limit + 1})
    items = [{"metadata": {"id": f"item-{page}-{n}"}} for n in range(30)]
    query = "&".join(f"{k}={v}" for k, v in request.query.items() if k != "page")
    link = f"{base_url}{request.path}?{query}&page={page + 1}"
    return json_response(200, items, (("Link", f'<{link}>; rel="next"'),))


def _integer(values: Mapping[str, object], name: str, default: int) -> int:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _number(values: Mapping[str, object], name: str, default: float) -> float:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None
    probability: float | None


class FaultBook:
    """Faults queued per route, consumed in order; safe to use from many threads."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[_Queued]] = {}
        self._random = random.Random(seed)  # noqa: S311 - test fault timing, not security

    def add(
        self,
        route: str,
        fault: Fault,
        *,
        times: int | Unset | None = UNSET,
        probability: float | None = None,
    ) -> None:
        """Queue `fault` for `route`.

        `times` is how many requests the fault is applied to (None: no limit). Unless
        given it is 1, or unlimited when a `probability` is set, since "fail 10% of
        requests" should mean all requests from now on.
        """
        if isinstance(times, Unset):
            times = None if probability is not None else 1
        if times is not None and (isinstance(times, bool) or times < 1):
            raise ValueError(f"times must be a positive integer or None, got {times!r}")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {probability!r}")
        with self._lock:
            self._queues.setdefault(route, []).append(_Queued(fault, times, probability))

    def take(self, route: str) -> Fault | None:
        """The fault to apply to this request of `route`, if any, counting it as used."""
        with self._lock:
            queue = self._queues.get(route)
            if not queue:
                return None
            for entry in queue:
                if entry.probability is not None and self._random.random() >= entry.probability:
                    continue
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        queue.remove(entry)
                return entry.fault
            return None

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def pending(self) -> dict[str, list[str]]:
        """Kinds still queued per route, for the admin endpoint."""
        with self._lock:
            return {
                route: [entry.fault.kind for entry in queue]
                for route, queue in self._queues.items()
                if queue
            }
