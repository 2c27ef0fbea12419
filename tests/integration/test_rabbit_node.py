"""The private RabbitMQ node (tests/support/rabbitmq.py): what the suite and a later
cluster of such nodes rely on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from kombu import Connection

from tests.conftest import skip_without_rabbitmq
from tests.support.rabbitmq import RabbitNode, RabbitServer, RabbitUnavailable


@pytest.fixture
def node() -> Iterator[RabbitNode]:
    """A node of this test alone: it is killed, which the session's node must not be."""
    try:
        made = RabbitNode(cookie="shared-by-a-cluster")
    except RabbitUnavailable as exc:
        skip_without_rabbitmq(exc)
    made.start()
    try:
        yield made
    finally:
        made.cleanup()


def test_a_killed_node_starts_again_with_its_ports_name_and_vhosts(node: RabbitNode) -> None:
    """SIGKILL, then start: the same AMQP and management addresses answer, the vhost made
    before the crash is still there, and `rabbitmqctl -n` reaches the node by its cookie."""
    server = RabbitServer.of_node(node)
    vhost = server.create_vhost()
    url, management = node.url, node.management_url
    node.kill()
    assert not node.alive
    node.start()
    assert (node.url, node.management_url) == (url, management)
    assert vhost.rsplit("/", 1)[1] in server.vhosts()
    with Connection(vhost, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
    assert node.name in node.rabbitmqctl("status", "--formatter", "json")
    assert (node.dir / "home" / ".erlang.cookie").read_text() == "shared-by-a-cluster"
    overview = requests.get(f"http://127.0.0.1:{node.management_port}/api/overview",
                           auth=("guest", "guest"), timeout=10).json()  # fmt: skip
    assert overview["node"] == node.name
