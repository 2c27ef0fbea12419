"""RabbitMQ policies provably in force, on the suite's own node: `apply-policy` puts them
on the vhost the broker URL names (percent-decoded, as kombu reads it), and `health`
fails a queue whose effective policy is not ours with our keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from kombu import Connection

from brokers import ALL_QUEUES
from brokers.amqp import AmqpBroker, amqp_queue
from brokers.rabbitmq_api import ManagementApi
from ops.cli import cli
from ops.cli.rabbitmq import queue_lines
from tests.support.celery_worker import wait_for
from tests.support.rabbitmq import RabbitServer

LIMIT = 20


@pytest.fixture
def encoded_vhost(rabbit_server: RabbitServer) -> Iterator[tuple[str, str]]:
    """A vhost whose name has a `/` (so its URL carries `%2F`), made by nobody yet: its
    name and its AMQP URL. Deleted after."""
    name = f"apiworker-test/{uuid.uuid4().hex[:8]}"
    yield name, f"{rabbit_server.url}/{quote(name, safe='')}"
    api = ManagementApi(rabbit_server.management_url)
    for gone in (name, quote(name, safe="")):
        api.request("delete", f"vhosts/{quote(gone, safe='')}")


def test_apply_policy_decodes_the_vhost_and_health_fails_an_overriding_policy(
    rabbit_server: RabbitServer, encoded_vhost: tuple[str, str]
) -> None:
    """A `%2F` in the URL is a `/` in the vhost's name: the policies land on the vhost
    the worker uses (not on one literally named `...%2F...`); every queue then passes;
    a policy of higher priority matching the queues makes each queue line, and
    `apiworker health`, fail and name it."""
    name, url = encoded_vhost
    env = {
        "CELERY_BROKER_URL": url,
        "RABBITMQ_MANAGEMENT_URL": rabbit_server.management_url,
        "BROKER_DELIVERY_LIMIT": str(LIMIT),
    }
    applied = CliRunner().invoke(cli, ["rabbitmq", "apply-policy"], env=env)
    assert applied.exit_code == 0, applied.output
    assert f"on vhost {name} " in applied.output, applied.output
    assert name in rabbit_server.vhosts()
    assert quote(name, safe="") not in rabbit_server.vhosts()

    with Connection(url, connect_timeout=5) as connection:  # the worker's declarations
        channel = connection.channel()
        for queue in ALL_QUEUES:
            amqp_queue(queue)(channel).declare()
    broker = AmqpBroker(url, management_url=rabbit_server.management_url)

    def lines() -> list[tuple[bool, str]]:
        return queue_lines(broker.cluster(ALL_QUEUES), LIMIT)

    # The API shows a new queue's policy at its next statistics sample.
    wait_for(lambda: all(ok for ok, _ in lines()), timeout=15, what="our policies in force")

    api = ManagementApi(rabbit_server.management_url)
    api.set_policy(
        name,
        "operator-catch-all",
        {"pattern": ".*", "apply-to": "queues", "priority": 99,
         "definition": {"max-length": 100_000}},
    )  # fmt: skip

    def failing() -> list[str]:
        return [line for ok, line in lines() if not ok and "operator-catch-all" in line]

    # Each queue shows the policy at its own next statistics sample: wait for all of them.
    wait_for(
        lambda: len(failing()) == len(ALL_QUEUES),
        timeout=15,
        what="every queue failing under the overriding policy",
    )

    def health() -> str | None:
        done = CliRunner().invoke(cli, ["health", "--timeout", "5"], env=env)
        assert done.exit_code != 0, done.output
        found = "operator-catch-all overrides apiworker-celery" in done.output
        return None if not found else done.output

    # A busy management API may miss one call (the cluster check then fails on that).
    wait_for(health, timeout=30, what="health naming the overriding policy")


def test_apply_policy_grants_the_app_user_its_own_resources_only(
    rabbit_server: RabbitServer,
) -> None:
    """`--grant-app-user` makes CELERY_BROKER_URL's user (password percent-decoded) with
    no tags: it connects and declares the service's queues, and is refused anything
    else; `--wait-nodes` returns once the node runs."""
    vhost = f"apiworker-test-{uuid.uuid4().hex[:8]}"
    user, password = f"{vhost}-granted", "p@ss/w:rd"
    host = rabbit_server.url.rsplit("@", 1)[1]
    url = f"amqp://{user}:{quote(password, safe='')}@{host}/{vhost}"
    env = {"CELERY_BROKER_URL": url, "RABBITMQ_MANAGEMENT_URL": rabbit_server.management_url}
    api = ManagementApi(rabbit_server.management_url)
    try:
        applied = CliRunner().invoke(
            cli, ["rabbitmq", "apply-policy", "--wait-nodes", "1", "--grant-app-user"], env=env
        )
        assert applied.exit_code == 0, applied.output
        assert "1 nodes running" in applied.output
        assert password not in applied.output
        assert api._object(f"users/{quote(user, safe='')}")["tags"] in ("", [])  # type: ignore[index]
        with Connection(url, connect_timeout=5) as connection:
            channel = connection.channel()
            amqp_queue("celery")(channel).declare()
            with pytest.raises(connection.channel_errors, match="ACCESS_REFUSED"):
                channel.queue_declare("someone-elses", durable=True)
    finally:
        api.request("delete", f"vhosts/{quote(vhost, safe='')}")
        api.request("delete", f"users/{quote(user, safe='')}")
