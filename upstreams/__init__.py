"""The upstream registry: one entry per upstream, everything else derived from it.

As Celery's `app.tasks` names each task once, an `Upstream` names once what the service
needs to know of an upstream: its client module (in `apis/`), its settings model and
the variables of its base URL and token, its user agent, its queue, its budget, its
circuit breaker, the task module whose tasks it routes, its periodic jobs, the kinds of
result it stores and where the sandbox serves it. The broker's queues, Celery's routes
and includes, the beat schedule, the circuit gauges, the settings check at start, the
CLI's tables, the offline mode and the README's table of upstreams all come from here.

Below the API layer and the brokers, it names modules by their dotted paths (as Celery's
`include=` does) and imports none of them. Built-in entries are listed in `BUILT_IN`;
an installed package adds its own through the `apiworker.upstreams` entry-point group
(its value an `Upstream`), with no file of this project edited.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "Periodic",
    "ResultAlias",
    "SandboxRoute",
    "Upstream",
    "all_upstreams",
    "offline_settings",
    "queue_names",
    "register",
]

ENTRY_POINT_GROUP = "apiworker.upstreams"


@dataclass(frozen=True)
class Periodic:
    """One periodic job of an upstream: beat sends `task` every `interval_setting` seconds
    (0: never), once the upstream is configured (its base URL, and its token if its
    client needs one)."""

    #: The beat entry's name.
    name: str
    #: The task's public name.
    task: str
    #: The variable of its interval in seconds (a field of the worker's settings, or of
    #: the upstream's own settings model).
    interval_setting: str


@dataclass(frozen=True)
class ResultAlias:
    """Another ident that finds a kind's results: PokeAPI stores a Pokémon under its
    name, and a job sent with its id finds it through an index (`index` maps the alias to
    the ident; the results store keeps it, and splits it into partitions as it does the
    change events). `index` is a key of the results contract that readers know: it is
    named here once, and never changes."""

    #: The kind of result (one of its upstream's `result_kinds`).
    kind: str
    #: The key of the hash alias -> ident, without the key prefix or a partition.
    index: str


@dataclass(frozen=True)
class SandboxRoute:
    """A route the sandbox upstream serves for an upstream: its name (for faults and
    counts), the path it answers (a regular expression matched in full; a `key` group, if
    any, is passed to `respond` unquoted) and its normal answer. `respond(request, key)`
    returns the sandbox's `Response`, or a `(status, JSON value)` pair, which a module of
    the service can give without importing the sandbox."""

    name: str
    pattern: str
    respond: Callable[[Any, str], object]


@dataclass(frozen=True)
class Upstream:
    """One upstream, named once."""

    #: The service's name: its queue, its breaker and rate-limit keys, its metric label.
    name: str
    #: Its client class, `module:Class` (an `apis.client.ApiClient`).
    client: str
    #: The module of its Celery tasks; every task in it is routed to `queue`.
    tasks: str
    #: The environment variable of its base URL.
    base_url_setting: str
    #: What it serves, for the tables (README, CLI).
    description: str = ""
    #: The environment variable of its fleet-wide budget's rate (requests per second, the
    #: ceiling; 0: none, learnt from its 429s). Its bucket size is
    #: `<rate_limit_setting>_BURST`, its concurrency `<NAME>_CONCURRENCY` (`budget_settings`).
    rate_limit_setting: str = ""
    #: Its budget when those variables are unset: the rate (requests/s; 0: none known)
    #: and the requests in flight at once (0: unbounded) it allows.
    rate_limit: float = 0.0
    concurrency: int = 0
    #: Whether its calls go through the shared circuit breaker (keys named after it).
    breaker: bool = True
    #: Its own HTTP timeouts in seconds, for an upstream slower than the rest (0: the
    #: shared HTTP_CONNECT_TIMEOUT and HTTP_READ_TIMEOUT).
    connect_timeout: float = 0.0
    read_timeout: float = 0.0
    #: The kinds of result its tasks store (`{kind}:{ident}` in the results contract),
    #: which `apiworker result` names when asked for another.
    result_kinds: tuple[str, ...] = ()
    #: The kinds among those whose results another ident finds too, and their indexes.
    result_aliases: tuple[ResultAlias, ...] = ()
    #: Its own settings, `module:Class` (a pydantic-settings model, such as
    #: `apis.config.UpstreamSettings`): every variable it reads (its base URL, its token,
    #: its periodic jobs' intervals), validated at start with every other setting
    #: (settings.checked_settings), one line per bad variable.
    settings: str = ""
    #: The environment variable of its API token ("": it takes none); its client refuses
    #: to call without it (`NotConfigured`), and sends `Authorization: <scheme> <token>`.
    token_setting: str = ""
    token_scheme: str = "Token"  # noqa: S105 (an auth scheme's name, not a secret)
    #: The User-Agent it asks for ("": the project's own).
    user_agent: str = ""
    #: The path the sandbox upstream serves it under (`/api/v2`): offline, its base URL is
    #: the sandbox's address and this path, its token the sandbox's ("": not served).
    sandbox_path: str = ""
    #: Its routes in the sandbox, `module:NAME` of a tuple of `SandboxRoute`s ("": the
    #: sandbox's own modules serve it, or it is not served).
    sandbox_routes: str = ""
    #: Its periodic jobs, which the beat schedule (worker/beat.py) is built from.
    periodic: tuple[Periodic, ...] = ()

    def __post_init__(self) -> None:
        for alias in self.result_aliases:
            if alias.kind not in self.result_kinds:
                raise ValueError(f"{self.name}: alias of {alias.kind!r}, not one of its kinds")

    @property
    def queue(self) -> str:
        """One queue per upstream, so a slow upstream cannot starve the others."""
        return self.name

    @property
    def route(self) -> tuple[str, dict[str, str]]:
        """Celery's task route of its tasks."""
        return f"{self.tasks}.*", {"queue": self.queue, "routing_key": self.queue}

    @property
    def budget_settings(self) -> tuple[str, str, str]:
        """The variables of its budget: rate, burst, concurrency (none without a rate
        setting)."""
        if not self.rate_limit_setting:
            return ("", "", "")
        stem = self.rate_limit_setting.removesuffix("_RATE_LIMIT")
        return (self.rate_limit_setting, f"{self.rate_limit_setting}_BURST", f"{stem}_CONCURRENCY")

    def routes(self) -> tuple[SandboxRoute, ...]:
        """The sandbox routes `sandbox_routes` names (its module imported)."""
        if not self.sandbox_routes:
            return ()
        module, _, name = self.sandbox_routes.partition(":")
        found = tuple(getattr(importlib.import_module(module), name))
        for route in found:
            if not isinstance(route, SandboxRoute):
                raise TypeError(f"{self.sandbox_routes} holds {route!r}, not a SandboxRoute")
        return found

    @property
    def client_module(self) -> str:
        return self.client.partition(":")[0]

    @property
    def client_class(self) -> str:
        return self.client.partition(":")[2]


BUILT_IN = (
    Upstream(
        name="pokeapi",
        client="apis.pokeapi:PokeAPI",
        tasks="tasks.pokemon",
        base_url_setting="POKEAPI_BASE_URL",
        description="PokeAPI v2",
        rate_limit_setting="POKEAPI_RATE_LIMIT",
        result_kinds=("pokemon",),
        # Stored under its name; its id finds it too.
        result_aliases=(ResultAlias("pokemon", "index:pokemon-ids"),),
        settings="apis.pokeapi:PokeAPISettings",
        sandbox_path="/api/v2",
        periodic=(
            Periodic(
                "refresh-pokemon-catalog",
                "tasks.pokemon.refresh_catalog",
                "POKEMON_REFRESH_INTERVAL",
            ),
        ),
    ),
    Upstream(
        name="cms",
        client="apis.cms:CmsAPI",
        tasks="tasks.cms",
        base_url_setting="CMS_BASE_URL",
        description="the headless CMS",
        rate_limit_setting="CMS_RATE_LIMIT",
        result_kinds=("article",),
        settings="apis.cms:CmsSettings",
        sandbox_path="/api/v1",
        periodic=(Periodic("sync-cms-articles", "tasks.cms.sync_articles", "CMS_SYNC_INTERVAL"),),
    ),
    Upstream(
        name="semaphore",
        client="apis.semaphore:SemaphoreAPI",
        tasks="tasks.semaphore",
        base_url_setting="SEMAPHORE_BASE_URL",
        description="Semaphore CI, API v1alpha",
        rate_limit_setting="SEMAPHORE_RATE_LIMIT",
        result_kinds=("semaphore-pipelines", "semaphore-projects"),
        settings="apis.semaphore:SemaphoreSettings",
        token_setting="SEMAPHORE_API_TOKEN",  # noqa: S106 (a variable's name)
        # The user agent Semaphore's API documentation asks clients for.
        user_agent="SemaphoreCI v2.0 Client",
        sandbox_path="/api/v1alpha",
        periodic=(
            Periodic(
                "sync-semaphore-pipelines",
                "tasks.semaphore.sync_all_projects",
                "SEMAPHORE_SYNC_INTERVAL",
            ),
        ),
    ),
)

_lock = threading.Lock()
_registry: dict[str, Upstream] = {}


def register(upstream: Upstream) -> Upstream:
    """Add an entry (a name is registered once: a second, different entry is an error)."""
    with _lock:
        _load()
        known = _registry.get(upstream.name)
        if known is not None and known != upstream:
            raise ValueError(f"upstream {upstream.name!r} is registered already")
        _registry[upstream.name] = upstream
    return upstream


def all_upstreams() -> tuple[Upstream, ...]:
    """Every upstream: the built-in ones first, then the installed ones by name."""
    with _lock:
        _load()
        return tuple(_registry.values())


def queue_names() -> tuple[str, ...]:
    return tuple(upstream.queue for upstream in all_upstreams())


def offline_settings(sandbox_url: str, token: str) -> dict[str, str]:
    """The variables that point every upstream the sandbox serves at the sandbox at
    `sandbox_url`, with `token` (the one it accepts) for those that take one."""
    found: dict[str, str] = {}
    for upstream in all_upstreams():
        if upstream.sandbox_path:
            found[upstream.base_url_setting] = sandbox_url.rstrip("/") + upstream.sandbox_path
            if upstream.token_setting:
                found[upstream.token_setting] = token
    return found


def _load() -> None:
    if _registry:
        return
    for upstream in BUILT_IN:
        _registry[upstream.name] = upstream
    found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    for entry_point in found:
        upstream = entry_point.load()
        if not isinstance(upstream, Upstream):
            raise TypeError(f"entry point {entry_point.value} is not an upstreams.Upstream")
        if upstream.name in _registry:
            raise ValueError(f"upstream {upstream.name!r} is registered already")
        _registry[upstream.name] = upstream
