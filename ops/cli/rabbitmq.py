"""The RabbitMQ side of `apiworker`: its policies, and its cluster as health and queues
show it. Everything here goes through RabbitMQ's management API
(`RABBITMQ_MANAGEMENT_URL`, one URL or one per node separated by `;`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from brokers import (
    ALL_QUEUES,
    MANAGEMENT_URL_ENV,
    Broker,
    BrokerError,
    NotSupported,
    broker_kind,
)
from brokers.amqp import APP_PERMISSION_PATTERN, POLICY_PREFIX, apply_policies, queue_policies
from brokers.base import ClusterView, QueueReplicas
from brokers.rabbitmq_api import ManagementApi


def cluster_view(broker: Broker, queues: Sequence[str] = ALL_QUEUES) -> ClusterView | None:
    """The broker's cluster, or None when it has none or cannot tell (no management URL);
    `BrokerError` when the management API does not answer."""
    try:
        return broker.cluster(queues)
    except NotSupported:
        return None


def node_line(view: ClusterView) -> tuple[bool, str]:
    """Whether every queue keeps a majority of its replicas online, and the nodes."""
    down = view.down
    names = ", ".join(f"{node.name}{'' if node.running else ' (DOWN)'}" for node in view.nodes)
    detail = f"{len(view.nodes)} nodes, {len(down)} down: {names}"
    return all(_has_majority(queue.members, queue.online) for queue in view.queues), detail


#: Replicas a quorum queue should have: RabbitMQ's recommended size, or every node of a
#: smaller cluster (https://www.rabbitmq.com/docs/quorum-queues#replica-management).
TARGET_REPLICAS = 3


def queue_lines(view: ClusterView, delivery_limit: int | None = None) -> list[tuple[bool, str]]:
    """Per queue: whether it can serve (a leader, a majority online, min(3, nodes)
    members, and our policy really in force on it), and its leader and members, offline
    ones marked. `delivery_limit`, when given, must be the one in force too."""
    wanted = min(TARGET_REPLICAS, len(view.nodes)) if view.nodes else 1
    lines = []
    for queue in view.queues:
        if not queue.members:
            lines.append((True, f"{queue.name}: not declared yet"))
            continue
        members = " ".join(
            member if member in queue.online else f"{member}(offline)" for member in queue.members
        )
        ok = queue.leader is not None and _has_majority(queue.members, queue.online)
        problems = policy_problems(queue, delivery_limit)
        if len(queue.members) < wanted:
            problems.append(
                f"{len(queue.members)} of {wanted} replicas (grow it: docs/reliability.md)"
            )
        lines.append(
            (
                ok and not problems,
                f"{queue.name}: leader {queue.leader or 'NONE'}; members {members}; "
                f"policy {queue.policy or 'NONE'}"
                + (f" ({'; '.join(problems)})" if problems else ""),
            )
        )
    return lines


def policy_problems(queue: QueueReplicas, delivery_limit: int | None = None) -> list[str]:
    """Why the policy in force on `queue` is not ours with our keys; none when it is.

    RabbitMQ applies one policy per queue, the matching one of highest priority, merged
    with an operator policy: a policy of higher priority than ours, or an operator policy
    that lowers a key, changes the delivery limit or dead-lettering without a word.
    """
    ours = f"{POLICY_PREFIX}{queue.name}"
    if queue.policy is None:
        return ["no delivery limit or dead-lettering: apply-policy"]
    if queue.policy != ours:
        return [f"{queue.policy} overrides {ours}: no policy of higher priority may match"]
    expected = dict(queue_policies(delivery_limit or 1, [queue.name])[ours]["definition"])
    if delivery_limit is None:
        expected.pop("delivery-limit")
    wrong = sorted(key for key, value in expected.items() if queue.effective.get(key) != value)
    if "delivery-limit" not in queue.effective:
        wrong = sorted({*wrong, "delivery-limit"})
    if wrong:
        found = ", ".join(f"{key}={queue.effective.get(key)!r}" for key in wrong)
        return [f"in force: {found}, not ours"]
    return []


def wait_for_nodes(api: ManagementApi, count: int, seconds: float) -> int:
    """Until `count` nodes run in the cluster (the management API of a node that answers
    says so); how many do, or `BrokerError` after `seconds`. Queues declared before the
    last nodes joined get fewer replicas (growing them takes membership reconciliation,
    RabbitMQ 3.13+, or `rabbitmq-queues grow`)."""
    deadline = time.monotonic() + seconds
    running = 0
    while True:
        try:
            running = sum(1 for node in api.get_json("nodes") if node.get("running"))
        except BrokerError:
            running = 0  # the nodes are still starting
        if running >= count:
            return running
        if time.monotonic() > deadline:
            raise BrokerError(f"{running} of {count} nodes running after {seconds:g}s")
        time.sleep(1.0)


def url_credentials(url: str) -> tuple[str, str]:
    """The user and password of a broker URL (of its first URL, for a failover list),
    percent-decoded; `BrokerError` when it names none."""
    parts = urlsplit(url.split(";", 1)[0])
    if not parts.username or parts.password is None:
        raise BrokerError("CELERY_BROKER_URL names no user and password to grant")
    return unquote(parts.username), unquote(parts.password)


def _has_majority(members: Sequence[str], online: Sequence[str]) -> bool:
    return not members or len(set(online) & set(members)) > len(members) // 2


@click.group("rabbitmq")
def rabbitmq() -> None:
    """RabbitMQ's side of the queues: the policies that give them a delivery limit and
    dead-lettering (through its management API, RABBITMQ_MANAGEMENT_URL)."""


@rabbitmq.command("apply-policy")
@click.option("--dry-run", is_flag=True, help="Print the policies; set nothing.")
@click.option(
    "--wait-nodes",
    type=click.IntRange(min=1),
    default=None,
    help="First wait (up to --wait-seconds) until this many nodes run in the cluster, so "
    "the queues the workers declare next get a replica on each.",
)
@click.option("--wait-seconds", type=click.FloatRange(min=0), default=300.0, show_default=True)
@click.option(
    "--grant-app-user",
    is_flag=True,
    help="Also create (or update) CELERY_BROKER_URL's user: no tags, and rights on the "
    "vhost's own queues and exchanges only (needs an administrator management user).",
)
@click.pass_obj
def apply_policy(
    services: Any,
    dry_run: bool,
    wait_nodes: int | None,
    wait_seconds: float,
    grant_app_user: bool,
) -> None:
    """Set each queue's policy (delivery limit BROKER_DELIVERY_LIMIT, dead-lettering to
    `{queue}.dead`, reject-publish overflow, balanced leaders, and on RabbitMQ 3.12+
    consumer-timeout BROKER_CONSUMER_TIMEOUT) on CELERY_BROKER_URL's vhost, creating the
    vhost (default queue type quorum) when it is missing. Idempotent: run it at each
    deploy, before the workers start.
    """
    settings = services.settings
    if broker_kind(settings.broker_url) != "amqp":
        raise click.UsageError("CELERY_BROKER_URL is not a RabbitMQ URL: nothing to apply")
    broker = services.broker()
    vhost = broker.vhost
    limit = settings.broker_delivery_limit
    if dry_run:
        for name, body in queue_policies(limit).items():
            click.echo(f"would set {name} on vhost {vhost}: {body}")
        return
    management = os.environ.get(MANAGEMENT_URL_ENV)
    if not management:
        raise click.UsageError(f"set {MANAGEMENT_URL_ENV} (the management API of any node)")
    api = ManagementApi(management)
    try:
        if wait_nodes is not None:
            running = wait_for_nodes(api, wait_nodes, wait_seconds)
            click.echo(f"{running} nodes running")
        applied = apply_policies(api, vhost, limit, settings.broker_consumer_timeout)
        found = api.vhost(vhost) or {}
        if grant_app_user:
            user, password = url_credentials(settings.broker_url)
            api.grant_app_user(vhost, user, password, APP_PERMISSION_PATTERN)
            click.echo(f"user {user}: no tags, rights on vhost {vhost}'s own resources")
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    for name in applied:
        click.echo(f"set {name} on vhost {vhost} (delivery-limit {limit})")
    default_type = found.get("default_queue_type") or "undefined"
    if default_type != "quorum":
        click.echo(
            f"note: vhost {vhost}'s default queue type is {default_type}: a producer that "
            "declares queues without x-queue-type (celery-node) is refused; RabbitMQ 3.10 "
            "sets it only on a new vhost (docs/reliability.md, upgrading)",
            err=True,
        )
