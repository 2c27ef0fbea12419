"""`apiworker health`: the broker, Redis, the workers and every upstream, checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import click
import redis
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry
from rich.table import Table

import redisconn
from apis import ApiClient, ApiSettings, client_classes
from apis.budget import read_state
from apis.config import RetryPolicy
from brokers import (
    BrokerError,
)
from ops.cli import rabbitmq
from ops.cli.base import (
    ConfigError,
    Services,
    broker_words,
    cli,
    echo_table,
)
from redisconn import RedisTarget
from settings import get_settings
from telemetry.redact import masked_url, redact


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not configured, so not checked
    detail: str

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skip"}[self.ok]


def print_checks(checks: list[Check]) -> None:
    """One row per check (status, name, detail), laid out by rich. No header, and no
    wrapping when the output is not a terminal: each check stays one line that scripts
    and `grep FAIL` read."""
    table = Table(box=None, show_header=False, pad_edge=False)
    for column in ("status", "check", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.status, check.name, check.detail)
    echo_table(table)


def ping_redis(
    services: Services, name: str, target: RedisTarget, timeout: float, source: str
) -> Check:
    """PING, once; the detail names the Redis and the variable its address came from."""
    # No retries: a health check reports the state now, within its timeout.
    client = services.redis(
        target, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    where = f"{target.describe()} ({source})"
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return Check(name, False, redact(f"{where}: {exc}"))
    return Check(name, True, where)


def redis_cluster_check(services: Services, target: RedisTarget, timeout: float) -> Check:
    """The Redis Cluster's state (every slot served) and each master's replicas: a master
    without one takes results that a failover would lose, and its writes are not waited
    for (results/replicas.py)."""
    client = services.redis(
        target, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        state = client.cluster_info().get("cluster_state")  # type: ignore[attr-defined]
        replies = client.info("replication", target_nodes="primaries")
    except (redis.RedisError, OSError) as exc:
        return Check("redis cluster", False, redact(f"{target.describe()}: {exc}"))
    replicas = {node: int(info.get("connected_slaves", 0)) for node, info in replies.items()}
    alone = sorted(node for node, count in replicas.items() if count == 0)
    detail = f"state {state}, {len(replicas)} masters, replicas " + ", ".join(
        f"{node}={count}" for node, count in sorted(replicas.items())
    )
    if alone:
        detail += f"; without a replica (a failover would lose their writes): {', '.join(alone)}"
    return Check("redis cluster", state == "ok" and not alone, detail)


def sentinel_check(target: RedisTarget) -> Check:
    """Where the sentinels say the master is, which replicas follow it, who answers."""
    try:
        found = redisconn.topology(target)
    except (redis.RedisError, OSError) as exc:
        return Check("sentinel", False, redact(f"{target.describe()}: {exc}"))
    replicas = ", ".join(f"{host}:{port}" for host, port in found.replicas) or "none"
    host, port = found.master
    detail = (
        f"master {target.master} at {host}:{port}; replicas: {replicas}; "
        f"sentinels answering: {found.sentinels_answering}/{len(target.sentinels)}"
    )
    return Check("sentinel", True, detail)


def ping_broker(services: Services, timeout: float) -> Check:
    """The broker checked over its own protocol (Redis PING, an AMQP connection)."""
    try:
        broker = services.broker()
        return Check("broker", True, f"{broker.ping(timeout)} ({services.broker_source})")
    except ConfigError as exc:
        return Check("broker", False, str(exc))
    except BrokerError as exc:
        where = f"{services.broker_endpoint().url} ({services.broker_source})"
        return Check("broker", False, f"{where}: {broker_words(services, exc)}")


def ping_workers(services: Services, timeout: float) -> Check:
    replies = services.celery().control.ping(timeout=timeout)
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check("workers", False, f"no worker answered within {timeout:g}s")
    return Check("workers", True, f"{len(names)} answered: {', '.join(names)}")


# One cheap GET per upstream, through the API layer so auth and errors are the worker's.
# Each client names its own (`ApiClient.probe`); the upstreams are the registry's.
PROBES: Mapping[type[ApiClient], Callable[[Any], object]] = {
    cls: cls.probe for cls in client_classes()
}


def probe_upstream(
    cls: type[ApiClient], probe: Callable[[Any], object], api: ApiSettings, timeout: float
) -> Check:
    config = cls.configure(api)
    if config.base_url is None:
        return Check(cls.service, None, f"not configured (set {config.base_url_setting})")
    if not config.configured:
        return Check(cls.service, None, f"not configured (set {config.token_setting})")
    quick = replace(
        config,
        connect_timeout=timeout,
        read_timeout=timeout,
        retry=RetryPolicy(attempts=1, max_seconds=timeout),
    )
    client = cls(quick)
    try:
        probe(client)
    except Exception as exc:  # a health check reports every failure; it must not crash
        return Check(cls.service, False, redact(f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()
    return Check(cls.service, True, masked_url(config.base_url))


def cluster_checks(services: Services) -> list[Check]:
    """A RabbitMQ cluster's nodes (which are down) and each queue's leader and members."""
    try:
        view = rabbitmq.cluster_view(services.broker())
    except BrokerError as exc:
        return [Check("cluster", False, str(exc))]
    if view is None:
        return []
    ok, detail = rabbitmq.node_line(view)
    lines = rabbitmq.queue_lines(view, services.settings.broker_delivery_limit)
    return [Check("cluster", ok, detail), *(Check("queue", ok, line) for ok, line in lines)]


def upstream_checks(timeout: float) -> list[Check]:
    try:
        api = get_settings().api
    except ValidationError as exc:
        return [Check("upstreams", False, f"invalid settings: {exc.errors()[0]['msg']}")]
    return [probe_upstream(cls, probe, api, timeout) for cls, probe in PROBES.items()]


def budget_checks(services: Services, timeout: float) -> list[Check]:
    """Each upstream pausing the fleet (it answered 429, or 503 with Retry-After): named,
    with the pause left and its rate. A pause is the budget doing its job, not a fault."""
    settings = services.settings
    try:
        client = services.redis(
            settings.state_redis, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        states = [read_state(client, settings.result_key_prefix, cls.service) for cls in PROBES]
    except (redis.RedisError, OSError) as exc:
        detail = f"not read ({type(exc).__name__}): workers use local buckets meanwhile"
        return [Check("budget", None, detail)]
    paused = [state for state in states if state.paused_for > 0]
    if not paused:
        return [Check("budget", True, "no upstream is pausing the fleet")]
    return [
        Check(
            "budget",
            True,
            f"{state.service} is pausing the fleet: {state.paused_for:.1f}s left, "
            f"rate {state.rate:.3g}/s",
        )
        for state in paused
    ]


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds each check may take.",
)
@click.pass_context
def health(ctx: click.Context, timeout: float) -> None:
    """Check the broker, the results Redis, the workers and each configured upstream.

    Prints one line per check. Exit 0 when every check passes (an upstream that is not
    configured is skipped), 1 otherwise.
    """
    services: Services = ctx.obj
    settings = services.settings
    broker = ping_broker(services, timeout)
    results = ping_redis(services, "results", settings.state_redis, timeout, services.redis_source)
    checks = [broker, results]
    if settings.redis.uses_sentinel:
        checks.append(sentinel_check(settings.redis))
    if settings.state_redis.uses_cluster and results.ok:
        checks.append(redis_cluster_check(services, settings.state_redis, timeout))
    if broker.ok:
        checks += cluster_checks(services)
        checks.append(ping_workers(services, timeout))
    else:
        checks.append(Check("workers", False, "not checked: the broker is unreachable"))
    checks += upstream_checks(timeout)
    checks += budget_checks(services, timeout)
    print_checks(checks)
    if any(check.ok is False for check in checks):
        ctx.exit(1)
