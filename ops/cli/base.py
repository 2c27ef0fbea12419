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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError

import redisconn
from brokers import (
    Broker,
    BrokerError,
    broker_module,
    open_broker,
)
from ops.processes import redacted
from redisconn import RedisTarget
from settings import WorkerSettings
from tasks.keys import Keys
from upstreams import all_upstreams
from worker.app import app as project_app


def public_tasks() -> dict[str, tuple[str, ...]]:
    """The public contract, task name -> its parameters: every task of a registered
    upstream's task module that is not internal, from Celery's own registry (`app.tasks`),
    in the upstream registry's order. Checked before sending, because a job under a wrong
    name or with the wrong arguments would only fail on the worker."""
    project_app.loader.import_default_modules()
    found: dict[str, tuple[str, ...]] = {}
    for upstream in all_upstreams():
        tasks = [
            (name, task)
            for name, task in project_app.tasks.items()
            if task.__module__ == upstream.tasks and not getattr(task, "internal", False)
        ]
        # In the order they are defined in their module.
        for name, task in sorted(tasks, key=lambda item: item[1].run.__code__.co_firstlineno):
            # A bound task's `run` has its `self` bound already.
            found[name] = tuple(inspect.signature(task.run).parameters)
    return found


PUBLIC_TASKS: Mapping[str, tuple[str, ...]] = public_tasks()

# What a sender must share with the worker for a job to be routed and decoded as the
# worker expects; the connection URLs are deliberately not among them.
_SENDER_CONF = (
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_accept_content",
    "task_default_queue",
    "task_routes",
    "result_extended",
)

Record = dict[str, str]
Entry = tuple[str, Record]


class ConfigError(click.ClickException):
    """The environment or an option names an invalid setting: a usage error."""

    exit_code = 2


def fail(message: str) -> NoReturn:
    """Stop with exit code 1: what was asked about failed or does not exist."""
    raise click.ClickException(message)


def json_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: The URL with any password masked, so output can be pasted into a ticket.
safe_url = redacted


def sender_app(settings: WorkerSettings) -> Celery:
    """A sender with the project app's routing and serialisation and these settings' URLs.

    `worker.app` fixes its broker when it is first imported; copying its routing instead
    keeps jobs routed exactly as the worker expects while honouring this invocation's URLs.
    """
    app = Celery("apiworker", set_as_current=False)
    app.conf.update(
        {name: project_app.conf[name] for name in _SENDER_CONF},
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


@dataclass
class Services:
    """The connections one invocation needs, opened on first use and closed at exit."""

    settings: WorkerSettings
    _clients: list[redis.Redis] = field(default_factory=list)
    _celery: Celery | None = None
    _broker: Broker | None = None

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.result_key_prefix)

    def results(self) -> redis.Redis:
        """The results Redis: REDIS_URL, or the master the sentinels name."""
        return self.redis(self.settings.redis)

    def broker(self) -> Broker:
        """The broker behind CELERY_BROKER_URL, over its own protocol."""
        if self._broker is None:
            prefix = project_app.conf.broker_transport_options.get("global_keyprefix", "")
            try:
                self._broker = open_broker(
                    self.settings.broker_url,
                    redis_key_prefix=prefix,
                    redis_target=self.settings.broker_redis,
                )
            except BrokerError as exc:
                raise ConfigError(str(exc)) from exc
        return self._broker

    def redis(self, target: RedisTarget | str, **options: Any) -> redis.Redis:
        """A client of `target` (a URL for a Redis given on its own, as `queues` does)."""
        if isinstance(target, str):
            target = RedisTarget.from_url(target)
        try:
            client = redisconn.client(
                target, **{"decode_responses": True, "socket_connect_timeout": 5, **options}
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {target.describe()}: {exc}") from exc
        self._clients.append(client)
        return client

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


class OperatorGroup(click.Group):
    """Turns an unreachable Redis or broker into a one-line error and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis error: {exc}") from exc
        except (OperationalError, BrokerError) as exc:
            raise click.ClickException(f"broker error: {exc}") from exc


@click.group(cls=OperatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", metavar="URL", help="Results Redis; overrides REDIS_URL.")
@click.option("-v", "--verbose", is_flag=True, help="Also show the libraries' log messages.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, verbose: bool) -> None:
    """Operate the api-layer-worker: send jobs, read results, replay failures, check health.

    Reads the worker's environment variables (REDIS_URL, CELERY_BROKER_URL,
    CELERY_RESULT_BACKEND, RESULT_KEY_PREFIX, POKEAPI_BASE_URL, ...).
    """
    # There is no --broker-url: Celery itself prefers CELERY_BROKER_URL to its config,
    # so such an option could not be honoured for sending.
    overrides: dict[str, Any] = {} if redis_url is None else {"redis_url": redis_url}
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid worker settings:\n{exc}") from exc
    services = Services(settings)
    ctx.call_on_close(services.close)
    ctx.obj = services
