"""`apiworker`: the command group, the connections one invocation opens, the helpers its
commands share; each command group is its own module in this package.

It sends jobs by their public names, reads the results contract and the failure stream,
and checks what the worker depends on. Settings come from the worker's own environment
variables, read afresh on every invocation rather than from the process-wide caches,
so a command always talks to the Redis it was pointed at.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any, NoReturn
from urllib.parse import urlsplit

import click
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

import redisconn
from brokers import (
    Broker,
    BrokerError,
    broker_module,
    open_broker,
)
from redisconn import RedisTarget
from results.keys import Keys
from settings import ConfigurationError, WorkerSettings, checked_settings
from settings.errors import USAGE_EXIT_CODE, lines_of
from tasks.messages import SENDER_CONF, TASK_MODULES
from telemetry.redact import masked_url, redact


def public_tasks() -> dict[str, tuple[str, ...]]:
    """The public contract, task name -> its parameters: every task of a registered
    upstream's task module that is not internal, from Celery's own registry (`app.tasks`),
    in the upstream registry's order. Checked before sending, because a job under a wrong
    name or with the wrong arguments would only fail on the worker."""
    registry = Celery("apiworker-tasks", include=list(TASK_MODULES), set_as_current=False)
    registry.loader.import_default_modules()
    found: dict[str, tuple[str, ...]] = {}
    for module in TASK_MODULES:
        tasks = [
            (name, task)
            for name, task in registry.tasks.items()
            if task.__module__ == module and not getattr(task, "internal", False)
        ]
        # In the order they are defined in their module.
        for name, task in sorted(tasks, key=lambda item: item[1].run.__code__.co_firstlineno):
            # A bound task's `run` has its `self` bound already.
            found[name] = tuple(inspect.signature(task.run).parameters)
    return found


class _PublicTasks(Mapping[str, tuple[str, ...]]):
    """`public_tasks()`, read on first use: the task modules bring Celery, the API layer
    and every upstream's client with them, which `apiworker --help` and most commands do
    not need."""

    @cached_property
    def _tasks(self) -> dict[str, tuple[str, ...]]:
        return public_tasks()

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


PUBLIC_TASKS: Mapping[str, tuple[str, ...]] = _PublicTasks()

Record = dict[str, str]
Entry = tuple[str, Record]


class ConfigError(click.ClickException):
    """The environment or an option names an invalid setting: a usage error, one line
    per bad variable (`settings.errors`)."""

    exit_code = USAGE_EXIT_CODE

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.format_message().splitlines():
            click.echo(f"Error: {line}", err=True, file=file)


def fail(message: str) -> NoReturn:
    """Stop with exit code 1: what was asked about failed or does not exist."""
    raise click.ClickException(message)


def json_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sender_app(settings: WorkerSettings) -> Celery:
    """A sender with the worker's routing and serialisation and these settings' URLs.

    `worker.app` fixes its broker when it is first imported; sharing its routing instead
    (`tasks.messages`) keeps jobs routed exactly as the worker expects while honouring
    this invocation's URLs.
    """
    app = Celery("apiworker", set_as_current=False)
    app.conf.update(
        SENDER_CONF,
        # The queues and transport options of this invocation's broker, which need not be
        # the one `worker.app` was configured for when it was imported.
        **broker_module(settings.broker_url).celery_conf(settings),
        **settings.celery_connection.settings,
    )
    # Sentinel's master name and the sentinels' credentials (redisconn.celery_config).
    connection = settings.celery_connection
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        **connection.broker_transport_options,
    }
    app.conf.result_backend_transport_options = {
        **app.conf.result_backend_transport_options,
        **connection.backend_transport_options,
    }
    return app


@dataclass(frozen=True)
class Endpoint:
    """A server this invocation talked to, as an error names it: what it is, its URL
    (password masked) and the variable (or option) the URL came from."""

    role: str
    url: str
    source: str
    address: str | None = None  # host:port, as the driver's own errors spell it

    def describe(self) -> str:
        return f"{self.role} at {self.url} ({self.source})"


def _address(client: redis.Redis) -> str | None:
    """host:port of a plain client (a Sentinel client finds its master later: None)."""
    pool = getattr(client, "connection_pool", None)  # a RedisCluster has one per node
    if pool is None:
        return None
    options = pool.connection_kwargs
    host, port = options.get("host"), options.get("port")
    return f"{host}:{port}" if host and port else None


@dataclass
class Services:
    """The settings and connections one invocation needs, each read or opened on first
    use (so a command's `--help` needs neither) and closed at exit."""

    overrides: dict[str, Any] = field(default_factory=dict)
    _clients: list[redis.Redis] = field(default_factory=list)
    _celery: Celery | None = None
    _broker: Broker | None = None
    endpoints: list[Endpoint] = field(default_factory=list)

    @property
    def redis_source(self) -> str:
        """Where the results Redis's address came from, as the user would look for it."""
        if "redis_url" in self.overrides:
            return "--redis-url"
        if self.settings.redis_cluster_nodes:
            return "REDIS_CLUSTER_NODES"
        if self.settings.redis.uses_sentinel:
            return "REDIS_SENTINELS"
        if os.environ.get("REDIS_URL"):
            return "REDIS_URL"
        return "REDIS_URL unset: its default"

    @property
    def broker_source(self) -> str:
        return "CELERY_BROKER_URL" if self.settings.celery_broker_url else self.redis_source

    @property
    def backend_source(self) -> str:
        if self.settings.celery_result_backend:
            return "CELERY_RESULT_BACKEND"
        return self.redis_source

    def broker_endpoint(self) -> Endpoint:
        """The broker as errors name it (a Redis broker with the host:port its errors quote)."""
        target = self.settings.broker_redis
        address = None
        if target is not None and target.url is not None:
            parts = urlsplit(target.url)
            address = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else None
        url = target.describe() if target is not None else masked_url(self.settings.broker_url)
        return Endpoint("the broker", url, self.broker_source, address)

    def results_endpoint(self) -> Endpoint:
        """The results Redis as errors and `result` name it."""
        return Endpoint("Redis", self.settings.state_redis.describe(), self.redis_source)

    @cached_property
    def settings(self) -> WorkerSettings:
        """The whole tree as the worker checks it at start, then this invocation's view
        (`--redis-url`); a bad setting is a usage error, one line per variable."""
        try:
            tree = checked_settings()
            return WorkerSettings(**self.overrides) if self.overrides else tree.worker
        except ConfigurationError as exc:
            raise ConfigError(str(exc)) from exc
        except ValidationError as exc:
            raise ConfigError("\n".join(lines_of(WorkerSettings, exc))) from exc

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.result_key_prefix, self.settings.events_partitions)

    def results(self) -> redis.Redis:
        """The results Redis: the Redis Cluster of REDIS_CLUSTER_NODES, else REDIS_URL or
        the master the sentinels name."""
        return self.redis(self.settings.state_redis, source=self.redis_source)

    def broker(self) -> Broker:
        """The broker behind CELERY_BROKER_URL, over its own protocol."""
        if self._broker is None:
            prefix = self.celery().conf.broker_transport_options.get("global_keyprefix", "")
            try:
                self._broker = open_broker(
                    self.settings.broker_url,
                    redis_key_prefix=prefix,
                    redis_target=self.settings.broker_redis,
                )
            except BrokerError as exc:
                raise ConfigError(str(exc)) from exc
            self.endpoints.append(self.broker_endpoint())
        return self._broker

    def redis(self, target: RedisTarget | str, *, source: str = "", **options: Any) -> redis.Redis:
        """A client of `target` (a URL for a Redis given on its own, as `queues` does);
        `source` names the variable its address came from, for error messages."""
        if isinstance(target, str):
            target = RedisTarget.from_url(target)
        try:
            client = redisconn.client(
                target, **{"decode_responses": True, "socket_connect_timeout": 5, **options}
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {target.describe()}: {exc}") from exc
        self._clients.append(client)
        if source:
            self.endpoints.append(Endpoint("Redis", target.describe(), source, _address(client)))
        return client

    def blame(self, error: Exception, *, broker: bool = False) -> str:
        """The servers `error` is about, named as `Endpoint.describe` does: those whose
        host:port the error quotes, else every one this invocation opened (the broker's
        alone for a broker error)."""
        known = [e for e in self.endpoints if not broker or e.role == "the broker"]
        if broker and not known:
            known = [self.broker_endpoint()]
        quoted = [e for e in known if e.address and e.address in str(error)]
        # One server in two roles (the default: REDIS_URL is broker and results) is named once.
        roles: dict[tuple[str, str], set[str]] = {}
        for endpoint in quoted or known:
            roles.setdefault((endpoint.url, endpoint.source), set()).add(endpoint.role)
        named = [
            Endpoint(next(iter(role)) if len(role) == 1 else "Redis", url, source).describe()
            for (url, source), role in roles.items()
        ]
        return " or ".join(named) or "a server"

    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = sender_app(self.settings)
        return self._celery

    def close(self) -> None:
        for client in self._clients:
            client.close()
        if self._celery is not None:
            self._celery.close()
        if self._broker is not None:
            self._broker.close()


def unreachable_message(services: Services, error: Exception) -> str:
    """One line for a Redis or broker that failed a command: which server (its URL,
    masked, and the variable it came from), then the driver's own words."""
    if isinstance(error, redis.RedisError):
        verb = (
            "cannot reach"
            if isinstance(error, redis.ConnectionError | redis.TimeoutError)
            else "error from"
        )
        return f"{verb} {services.blame(error)}: {redact(str(error))}"
    return f"cannot reach {services.blame(error, broker=True)}: {broker_words(services, error)}"


def broker_words(services: Services, error: Exception) -> str:
    """A broker error's own words, without the masked URL it may start with (the caller
    names the broker once, with its variable)."""
    text = str(error)
    for endpoint in [*services.endpoints, services.broker_endpoint()]:
        text = text.removeprefix(f"{endpoint.url}: ")
    return redact(text)


class OperatorGroup(click.Group):
    """Turns an unreachable Redis or broker into one line naming it, and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.RedisError, OperationalError, BrokerError) as exc:
            message = unreachable_message(ctx.obj, exc) if ctx.obj else str(exc)
            raise click.ClickException(" ".join(message.split())) from exc


@click.group(cls=OperatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", metavar="URL", help="Results Redis; overrides REDIS_URL.")
@click.option("-v", "--verbose", is_flag=True, help="Also show the libraries' log messages.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, verbose: bool) -> None:
    """Operate the api-layer-worker: send jobs, read results, replay failures, check health.

    Reads the worker's environment variables (REDIS_URL, CELERY_BROKER_URL,
    CELERY_RESULT_BACKEND, RESULT_KEY_PREFIX, the upstreams' base URLs, ...).
    """
    # There is no --broker-url: Celery itself prefers CELERY_BROKER_URL to its config,
    # so such an option could not be honoured for sending.
    overrides: dict[str, Any] = {} if redis_url is None else {"redis_url": redis_url}
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    # Settings are read when a command first needs them, after click has handled the
    # command's own --help: help works whatever the environment holds.
    services = Services(overrides)
    ctx.call_on_close(services.close)
    ctx.obj = services


def echo_table(table: Table) -> None:
    """Print a rich table as plain lines: no markup read into the cells (a `[service GET
    path]` in an error stays), no trailing padding, and, when the output is not a
    terminal, no line folded, so each row stays one line for scripts and `grep`."""
    console = Console(markup=False, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 10_000
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())
