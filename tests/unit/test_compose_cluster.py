"""The compose file's `cluster` profile: six Redis Cluster nodes, joined once, that the
worker reaches with the settings the file's header documents (read as YAML: there is no
Docker engine here; the suite's own cluster, tests/support/redis_cluster.py, runs the same
redis-server options)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from settings import WorkerSettings
from tests.support.celery_worker import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
NODES = [f"redis-cluster-{n}" for n in range(1, 7)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_six_nodes_with_a_5_s_node_timeout_joined_with_a_replica_each(
    compose: dict[str, Any],
) -> None:
    """Six cluster-enabled nodes of the profile, each durable and announcing its name;
    the one-shot service creates 3 masters with a replica each, after all are healthy."""
    services = compose["services"]
    for node in NODES:
        service = services[node]
        assert service["profiles"] == ["cluster"]
        command = service["command"][2]
        for option in ("--cluster-enabled yes", "--cluster-node-timeout 5000", "--appendonly yes"):
            assert option in command
        assert service["environment"]["NODE"] == node
    create = services["redis-cluster-create"]
    assert create["profiles"] == ["cluster"]
    assert "--cluster-replicas 1" in create["command"][2]
    assert set(create["depends_on"]) == set(NODES)
    for name in ("worker", "beat", "flower"):
        assert "redis-cluster-create" in services[name]["depends_on"]


def test_the_worker_takes_the_documented_cluster_settings(compose: dict[str, Any]) -> None:
    """The header's REDIS_CLUSTER_NODES and EVENTS_PARTITIONS reach the app and are valid;
    left unset, the defaults keep a single Redis."""
    header = COMPOSE_FILE.read_text().split("--profile cluster", 1)[0].rsplit("\n#\n", 1)[1]
    documented = dict(re.findall(r"((?:REDIS_CLUSTER|EVENTS)_[A-Z_]+)=(\S+)", header))
    environment = compose["services"]["worker"]["environment"]
    assert environment["REDIS_CLUSTER_NODES"] == "${REDIS_CLUSTER_NODES:-}"
    assert environment["EVENTS_PARTITIONS"] == "${EVENTS_PARTITIONS:-1}"
    settings = WorkerSettings(
        redis_cluster_nodes=documented["REDIS_CLUSTER_NODES"],  # type: ignore[arg-type]
        events_partitions=int(documented["EVENTS_PARTITIONS"]),
    )
    assert settings.state_redis.cluster_nodes == tuple(
        (f"redis-cluster-{n}", 6379) for n in (1, 2, 3)
    )
    assert WorkerSettings(redis_cluster_nodes="", events_partitions=1).state_redis.url  # type: ignore[arg-type]
