"""Three private RabbitMQ nodes joined into one cluster, for the failover scenarios.

Built from `RabbitNode` (tests/support/rabbitmq.py): three nodes of this pytest process,
each with its own name, ports and files, sharing one Erlang cookie. The first starts
alone; the other two start, stop their RabbitMQ application, `join_cluster` the first
and start it again, as RabbitMQ's clustering guide does it
(https://www.rabbitmq.com/docs/clustering#creating). The three boot at once, so the
cluster is up in about the time of one boot plus the joins: start it once per module
that uses it.

A quorum queue declared on it gets a replica on each of the three (its default initial
group size is the cluster's size, up to 5), so it survives one node's death.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from urllib.parse import quote

import requests

from tests.support.rabbitmq import RabbitNode, RabbitServer

SIZE = 3


class RabbitCluster:
    """Three `RabbitNode`s in one cluster; node 0 is the one the others joined."""

    def __init__(self, size: int = SIZE) -> None:
        cookie = secrets.token_hex(16)
        self.nodes: list[RabbitNode] = []
        taken: set[int] = set()
        for _ in range(size):
            node = RabbitNode(cookie=cookie)
            # Each node's ports were free when chosen, but not reserved: two nodes must not
            # get the same one (the second would die on it while the first answers for it).
            while taken & (ports := {node.amqp_port, node.management_port, node.dist_port}):
                node._choose_ports()
                node._write_files()
            taken |= ports
            self.nodes.append(node)

    def start(self) -> RabbitCluster:
        # All three boot at once (each takes ~5 s), from this thread: see `launch`.
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.rabbitmqctl("stop_app")
            node.rabbitmqctl("join_cluster", first.name)
            node.rabbitmqctl("start_app")
            node.wait_ready()
        self.wait_running(len(self.nodes))
        return self

    def wait_running(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` nodes report running, as any live node's management API says."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running_nodes() == count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the cluster did not report {count} running nodes in {timeout}s")

    def running_nodes(self) -> int:
        for node in self.live:
            with contextlib.suppress(requests.RequestException, ValueError):
                answer = requests.get(
                    f"http://127.0.0.1:{node.management_port}/api/nodes",
                    auth=("guest", "guest"),
                    timeout=2,
                )
                if answer.status_code == 200:
                    return sum(1 for found in answer.json() if found.get("running"))
        return 0

    @property
    def live(self) -> list[RabbitNode]:
        return [node for node in self.nodes if node.alive]

    def server(self) -> RabbitServer:
        """Vhosts are made on node 0 and exist cluster-wide."""
        return RabbitServer.of_node(self.nodes[0])

    def failover_url(self, vhost_url: str) -> str:
        """The AMQP URL of `vhost_url`'s vhost on every node, `;`-separated, node 0 first."""
        vhost = vhost_url.rsplit("/", 1)[1]
        return ";".join(f"{node.url.rstrip('/')}/{vhost}" for node in self.nodes)

    @property
    def management_urls(self) -> str:
        return ";".join(node.management_url for node in self.nodes)

    def queue(self, vhost: str, name: str) -> dict[str, object]:
        """The queue as a live node's management API shows it (members, leader, online)."""
        for node in self.live:
            with contextlib.suppress(requests.RequestException):
                answer = requests.get(
                    f"http://127.0.0.1:{node.management_port}/api/queues/"
                    f"{quote(vhost, safe='')}/{quote(name, safe='')}",
                    auth=("guest", "guest"),
                    timeout=5,
                )
                if answer.status_code == 200:
                    found: dict[str, object] = answer.json()
                    return found
        raise RuntimeError(f"no live node knows queue {name} in {vhost}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
