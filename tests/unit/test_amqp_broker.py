"""The RabbitMQ broker's pure parts: the vhost and credentials read from URLs, and the
health verdict on a queue's policy and replicas."""

from __future__ import annotations

import pytest

from brokers.amqp import _vhost_of, queue_policies
from brokers.base import BrokerError, ClusterView, NodeState, QueueReplicas
from brokers.rabbitmq_api import ManagementApi
from ops.rabbitmq_cli import queue_lines

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
