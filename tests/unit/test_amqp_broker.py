"""The RabbitMQ broker's pure parts: the vhost and credentials read from URLs, and the
health verdict on a queue's policy and replicas."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu import Producer
from pydantic import ValidationError

from brokers import ALL_QUEUES, failover_order
from brokers.amqp import AMQP_CLASS, CONFIRM_TIMEOUT, _vhost_of, queue_policies
from brokers.base import BrokerError, ClusterView, NodeState, QueueReplicas
from brokers.rabbitmq_api import ManagementApi
from ops.cli.rabbitmq import queue_lines
from settings import WorkerSettings

NODES = tuple(NodeState(f"rabbit@n{index}", True) for index in range(1, 4))


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://u:p@h:5672/%2F", "/"),
        ("amqp://u:p@h:5672//", "/"),
        ("amqp://u:p@h:5672/", "/"),
        ("amqp://u:p@h:5672", "/"),
        ("amqp://u:p@h/jobs%2Fprod", "jobs/prod"),
        ("amqp://u:p@n1/v;amqp://u:p@n2/v", "v"),
    ],
)
def test_the_vhost_is_decoded_as_kombu_decodes_it(url: str, vhost: str) -> None:
    """`%2F` is the vhost `/`, as kombu connects to it."""
    assert _vhost_of(url) == vhost


def test_management_credentials_are_percent_decoded_and_never_default_to_guest() -> None:
    """`p%40ss` is sent as `p@ss`; a URL without a user is refused, not tried as guest."""
    api = ManagementApi("http://ops%2Dadmin:p%40ss@rabbit:15672")
    assert api._bases[0][1] == ("ops-admin", "p@ss")
    assert "p%40ss" not in api.display_url
    with pytest.raises(BrokerError, match="names no user"):
        ManagementApi("http://rabbit:15672")


def ours(name: str, limit: int = 20) -> QueueReplicas:
    body = queue_policies(limit, [name])[f"apiworker-{name}"]
    return QueueReplicas(name, tuple(n.name for n in NODES), tuple(n.name for n in NODES),
                         "rabbit@n1", f"apiworker-{name}", body["definition"])  # fmt: skip


def verdicts(*queues: QueueReplicas, limit: int | None = 20) -> list[bool]:
    return [ok for ok, _ in queue_lines(ClusterView(NODES, queues), limit)]


def test_a_queue_passes_only_under_our_policy_with_our_keys() -> None:
    """Ours: passes. Another policy (higher priority), none, an operator policy that
    lowers the delivery limit, or a different limit than configured: fails."""
    good = ours("celery")
    assert verdicts(good) == [True]
    other = QueueReplicas("celery", good.members, good.online, good.leader, "catch-all",
                          {"max-length": 10})  # fmt: skip
    lowered = QueueReplicas("celery", good.members, good.online, good.leader, good.policy,
                            {**good.effective, "delivery-limit": 2})  # fmt: skip
    none = QueueReplicas("celery", good.members, good.online, good.leader, None, {})
    assert verdicts(other, lowered, none) == [False, False, False]
    assert verdicts(ours("celery", limit=5)) == [False]
    assert verdicts(ours("celery", limit=5), limit=None) == [True]
    line = queue_lines(ClusterView(NODES, (other,)), 20)[0][1]
    assert "catch-all overrides apiworker-celery" in line


def test_a_queue_with_fewer_than_three_replicas_on_three_nodes_fails() -> None:
    """1 of 1 members is a majority, but not a replicated queue on a 3-node cluster."""
    good = ours("celery")
    lonely = QueueReplicas("celery", ("rabbit@n1",), ("rabbit@n1",), "rabbit@n1",
                           good.policy, good.effective)  # fmt: skip
    assert verdicts(lonely) == [False]
    assert "1 of 3 replicas" in queue_lines(ClusterView(NODES, (lonely,)), 20)[0][1]
    single = ClusterView(NODES[:1], (lonely,))
    assert [ok for ok, _ in queue_lines(single, 20)] == [True]


def test_rabbitmq_has_its_own_prefetch_and_delivery_limit_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On RabbitMQ: multiplier 1 and limit 20 unless the operator sets them; on Redis the
    defaults stay 2 and 5. The consumer-timeout check counts the four queues' prefetch."""
    redis_defaults = WorkerSettings()
    assert (redis_defaults.worker_prefetch_multiplier, redis_defaults.broker_delivery_limit) == (
        2,
        5,
    )
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://u:p@rabbit/v")
    rabbit = WorkerSettings()
    assert (rabbit.worker_prefetch_multiplier, rabbit.broker_delivery_limit) == (1, 20)
    assert rabbit.prefetched_per_thread == len(ALL_QUEUES)
    monkeypatch.setenv("WORKER_PREFETCH_MULTIPLIER", "2")
    monkeypatch.setenv("BROKER_DELIVERY_LIMIT", "7")
    chosen = WorkerSettings()
    assert (chosen.worker_prefetch_multiplier, chosen.broker_delivery_limit) == (2, 7)
    monkeypatch.setenv("BROKER_CONSUMER_TIMEOUT", "1300")  # under 150 x (1 + 4 x 2)
    with pytest.raises(ValidationError, match="1350s"):
        WorkerSettings()


def test_each_client_tries_the_nodes_of_a_failover_list_in_its_own_order() -> None:
    """The same URLs, shuffled; a single URL, or a Redis list, as it is."""
    urls = ";".join(f"amqp://u:p@n{index}/v" for index in range(1, 6))
    orders = {failover_order(urls) for _ in range(50)}
    assert len(orders) > 1
    assert all(sorted(order.split(";")) == sorted(urls.split(";")) for order in orders)
    assert failover_order("amqp://u:p@n1/v") == "amqp://u:p@n1/v"
    sentinels = "sentinel://a:26379;sentinel://b:26379"
    assert failover_order(sentinels) == sentinels


def test_every_publish_of_the_worker_app_waits_a_bounded_time_for_its_confirm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery has no setting for it: the app's AMQP class gives each publish
    CONFIRM_TIMEOUT unless the caller names one."""
    seen: list[Any] = []
    monkeypatch.setattr(Producer, "publish", lambda self, body, **kw: seen.append(kw))
    app = Celery("confirm-test", broker="memory://", set_as_current=False)
    app.amqp_cls = AMQP_CLASS
    app.send_task("tasks.pokemon.fetch_pokemon", args=["mew"])
    app.send_task("tasks.pokemon.fetch_pokemon", args=["mew"], confirm_timeout=1.5)
    assert [kw["confirm_timeout"] for kw in seen] == [CONFIRM_TIMEOUT, 1.5]
    assert CONFIRM_TIMEOUT < 10
