"""A private Redis Cluster for the suite: three masters and three replicas on loopback.

Six `redis-server --cluster-enabled yes` on free ports (each with its bus on another free
port, `cluster-port`, since port + 10000 may not be free or valid), joined by
`redis-cli --cluster create ... --cluster-replicas 1`, with `cluster-node-timeout` 5000
so a killed master is replaced in seconds. Everything is stopped and its files removed
by `cleanup`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from ops.processes.waits import StartupFailed
from settings import WorkerSettings
from tests.support.celery_worker import wait_for
from tests.support.redis_server import RedisServer, free_port

NODE_TIMEOUT_MS = 5000
MASTERS = 3
#: The event partitions a worker on the cluster runs with: more than its masters, so a
#: run's events land on every one of them.
PARTITIONS = 16


class PrivateCluster:
    """Three masters and three replicas, started and stopped by their owner."""

    def __init__(self, *, masters: int = MASTERS, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: apt-get install redis-tools")
        self.cli = cli
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [self._node() for _ in range(masters * 2)]

    def _node(self) -> RedisServer:
        return RedisServer(
            args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(free_port()),
                # Fail over even when the replica's link broke at the kill itself.
                "--cluster-replica-validity-factor", "0",
            ),
            prefix="apiworker-cluster-",
        )  # fmt: skip

    def _start_node(self, index: int, attempts: int = 3) -> None:
        """Start node `index`; a port taken since it was chosen (another server of the
        suite starting at that moment) gets the node new ports, up to `attempts` times."""
        for attempt in range(1, attempts + 1):
            try:
                self.nodes[index].start()
                return
            except StartupFailed:
                self.nodes[index].cleanup()
                if attempt == attempts:
                    raise
                self.nodes[index] = self._node()

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    @property
    def setting(self) -> str:
        """REDIS_CLUSTER_NODES for this cluster."""
        return ",".join(self.addresses)

    def start(self) -> PrivateCluster:
        try:
            for index in range(len(self.nodes)):
                self._start_node(index)
            subprocess.run(
                [self.cli, "--cluster", "create", *self.addresses, "--cluster-replicas", "1",
                 "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            wait_for(self.ready, timeout=30, what="the cluster's slots served, replicas in sync")
        except BaseException:
            self.cleanup()
            raise
        return self

    def ready(self) -> bool:
        """Every node says the cluster is ok, and every replica's link to its master is up."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue  # a killed node
            client = node.client()
            try:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                info = client.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[
                ClusterNode("127.0.0.1", node.port)  # type: ignore[no-untyped-call]
                for node in self.nodes
            ],
            decode_responses=True,
        )

    def master_of(self, key: str) -> RedisServer:
        """The node that serves `key`'s slot now."""
        client = self.client()
        try:
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            return next(n for n in self.nodes if n.port == node.port)
        finally:
            client.close()

    def masters_now(self) -> list[RedisServer]:
        found = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            client = node.client()
            try:
                if client.info("replication").get("role") == "master":
                    found.append(node)
            finally:
                client.close()
        return found

    def environment(self) -> dict[str, str]:
        """The variables that keep a worker's results (or a command's, or a reader's) on
        this cluster."""
        return {"REDIS_CLUSTER_NODES": self.setting, "EVENTS_PARTITIONS": str(PARTITIONS)}

    def worker_settings(self, **options: Any) -> WorkerSettings:
        """A worker's settings with its results on this cluster, as `environment` says."""
        return WorkerSettings(
            redis_cluster_nodes=self.addresses, events_partitions=PARTITIONS, **options
        )

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
        finally:
            client.close()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
