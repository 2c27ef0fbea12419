"""Maps request paths to named routes of the three impersonated APIs, and of the other
upstreams.

Route names are the handles tests use to inject faults and read request counts, so they
are part of the public surface and listed in `ROUTES` (and `route_names()`, which adds
the routes registry entries name, `Upstream.sandbox_routes`, and those of the
`apiworker.sandbox_routes` entry-point group: each an `upstreams.SandboxRoute`, so an
upstream added in its own module or as a package is served offline as the built-in ones
are).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from urllib.parse import unquote

from sandbox.cms import Cms
from sandbox.messages import Request, Response, json_response, text_response
from sandbox.pokeapi import PokeApi
from sandbox.semaphore import Semaphore
from upstreams import SandboxRoute, all_upstreams

__all__ = ["ROUTES", "UNKNOWN_ROUTE", "SandboxRoute", "added_routes", "route_names"]

ROUTES = (
    "pokemon",
    "pokemon_list",
    "article",
    "articles",
    "projects",
    "pipelines",
    "pipeline",
)
# Requests to no known route are counted under this name; it takes no faults.
UNKNOWN_ROUTE = "unknown"

_PATTERNS = (
    ("pokemon_list", re.compile(r"/api/v2/pokemon/?")),
    ("pokemon", re.compile(r"/api/v2/pokemon/(?P<key>[^/]+)/?")),
    ("articles", re.compile(r"/api/v1/articles/?")),
    ("article", re.compile(r"/api/v1/article/(?P<key>[^/]+)/?")),
    ("projects", re.compile(r"/api/v1alpha/projects/?")),
    ("pipelines", re.compile(r"/api/v1alpha/pipelines/?")),
    ("pipeline", re.compile(r"/api/v1alpha/pipelines/(?P<key>[^/]+)/?")),
)
_READ_METHODS = frozenset({"GET", "HEAD"})
ROUTE_ENTRY_POINT_GROUP = "apiworker.sandbox_routes"


@cache
def added_routes() -> tuple[SandboxRoute, ...]:
    """The routes the upstream registry's entries name (`Upstream.sandbox_routes`), then
    those installed packages add (`apiworker.sandbox_routes`), by name."""
    found = sorted(metadata.entry_points(group=ROUTE_ENTRY_POINT_GROUP), key=lambda e: e.name)
    routes = (
        *(route for upstream in all_upstreams() for route in upstream.routes()),
        *(entry_point.load() for entry_point in found),
    )
    for route in routes:
        if not isinstance(route, SandboxRoute):
            raise TypeError(f"{route!r} is not a sandbox.routes.SandboxRoute")
        if route.name in ROUTES or route.name == UNKNOWN_ROUTE:
            raise ValueError(f"sandbox route {route.name!r} exists already")
    return routes


def route_names() -> tuple[str, ...]:
    """Every route faults may be injected into: the built-in ones, then the added ones."""
    return (*ROUTES, *(route.name for route in added_routes()))


@dataclass(frozen=True)
class Route:
    """A matched route: its name and how to answer it normally (no fault)."""

    name: str
    respond: Callable[[Request], Response]


class Upstreams:
    """The three fake APIs bound to one server address and Semaphore token."""

    def __init__(
        self,
        base_url: str,
        semaphore_token: str,
        *,
        prewarm: bool = False,
        small_bodies: bool = False,
    ) -> None:
        self.pokeapi = PokeApi(base_url, small_bodies=small_bodies)
        if prewarm:
            self.pokeapi.prewarm()
        self.cms = Cms()
        self.semaphore = Semaphore(base_url, semaphore_token)

    def resolve(self, path: str) -> Route | None:
        for name, pattern in _PATTERNS:
            match = pattern.fullmatch(path)
            if match is not None:
                key = unquote(match.group("key")) if "key" in pattern.groupindex else ""
                return Route(name, self._responder(name, key))
        for added in added_routes():
            match = re.fullmatch(added.pattern, path)
            if match is not None:
                key = unquote(match.group("key")) if "key" in match.re.groupindex else ""
                return Route(added.name, _read_only(added.respond, key))
        return None

    def _responder(self, name: str, key: str) -> Callable[[Request], Response]:
        def respond(request: Request) -> Response:
            if request.method not in _READ_METHODS:
                return Response(405, b"", None, (("Allow", "GET, HEAD"),))
            return self._answer(name, key, request)

        return respond

    def _answer(self, name: str, key: str, request: Request) -> Response:
        if name == "pokemon":
            return self.pokeapi.pokemon(request, key)
        if name == "pokemon_list":
            return self.pokeapi.pokemon_list(request)
        if name == "article":
            return self.cms.article(request, key)
        if name == "articles":
            return self.cms.article_list(request)
        if not self.semaphore.authorized(request):
            return json_response(401, {"message": "Unauthorized"})
        if name == "projects":
            return self.semaphore.project_list(request)
        if name == "pipelines":
            return self.semaphore.pipeline_list(request)
        return self.semaphore.pipeline(request, key)


def _read_only(
    respond: Callable[[Request, str], object], key: str
) -> Callable[[Request], Response]:
    """An added route answers reads, and 405 to anything else, as the built-in ones do; a
    `(status, JSON value)` answer is sent as JSON."""

    def answer(request: Request) -> Response:
        if request.method not in _READ_METHODS:
            return Response(405, b"", None, (("Allow", "GET, HEAD"),))
        given = respond(request, key)
        if isinstance(given, Response):
            return given
        if isinstance(given, tuple) and len(given) == 2 and isinstance(given[0], int):
            return json_response(given[0], given[1])
        raise TypeError(f"a sandbox route answered {given!r}: a Response or (status, JSON)")

    return answer


def not_found() -> Response:
    """What any path outside the known routes gets, like the live APIs' plain 404."""
    return text_response(404, "Not Found")
