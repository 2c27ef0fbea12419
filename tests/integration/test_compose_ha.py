"""The compose file's `ha` profile: a master, a replica, three sentinels the app can use.

There is no Docker engine here, so the file is read as YAML; the sentinels' configuration
it writes is then given to a real `redis-server --sentinel`, which must accept it and
watch a real master.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from settings import WorkerSettings
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import RedisServer, free_port

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
HA_SERVICES = {"redis-master", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def shell(service: dict[str, Any]) -> str:
    """The `sh -c` script of a service, with compose's `$$` unescaped."""
    command = service["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2]).replace("$$", "$")


def documented_environment() -> dict[str, str]:
    """The variables the file's header tells an operator to set for the ha profile."""
    header = COMPOSE_FILE.read_text().split("--profile ha", 1)[0].rsplit("\n#\n", 1)[1]
    return dict(re.findall(r"(REDIS_[A-Z_]+)=(\S+)", header))


def test_the_ha_profile_has_a_durable_master_a_replica_and_three_sentinels(
    compose: dict[str, Any],
) -> None:
    """Exactly those five in the profile; both data nodes append-only, on their own volumes."""
    services = compose["services"]
    in_profile = {name for name, s in services.items() if "ha" in s.get("profiles", [])}
    assert in_profile == HA_SERVICES
    master, replica = shell(services["redis-master"]), shell(services["redis-replica"])
    assert "--appendonly yes" in master
    assert "--appendonly yes" in replica
    assert "--replicaof redis-master 6379" in replica
    volumes = {
        services[name]["volumes"][0].split(":")[0] for name in ("redis-master", "redis-replica")
    }
    assert len(volumes) == 2
    assert volumes <= set(compose["volumes"])


def test_the_sentinels_watch_the_master_with_a_quorum_of_two_of_three(
    compose: dict[str, Any],
) -> None:
    """Same monitor line in each; quorum 2 is a majority of the three."""
    monitors = {
        re.search(
            r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", shell(compose["services"][name])
        ).groups()  # type: ignore[union-attr]
        for name in HA_SERVICES
        if name.startswith("sentinel-")
    }
    assert monitors == {("apiworker", "redis-master", "6379", "2")}


def test_the_worker_and_beat_take_the_documented_sentinel_settings(
    compose: dict[str, Any],
) -> None:
    """The header's values reach worker and beat, and the settings accept them."""
    documented = documented_environment()
    assert documented["REDIS_SENTINELS"] == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"
    for name in ("worker", "beat", "flower"):
        environment = compose["services"][name]["environment"]
        for variable in ("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_PASSWORD"):
            assert environment[variable] == f"${{{variable}:-}}"
        assert "sentinel-1" in compose["services"][name]["depends_on"]
    target = WorkerSettings(
        redis_sentinels=documented["REDIS_SENTINELS"],  # type: ignore[arg-type]
        redis_sentinel_master=documented["REDIS_SENTINEL_MASTER"],
        redis_password=documented["REDIS_PASSWORD"],  # type: ignore[arg-type]
    ).redis
    assert target.sentinels == tuple((f"sentinel-{n}", 26379) for n in (1, 2, 3))
    assert target.master == "apiworker"


@pytest.fixture
def master() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def test_a_real_sentinel_accepts_the_profiles_configuration(
    compose: dict[str, Any], master: RedisServer
) -> None:
    """The file's sentinel.conf lines, pointed at a local master, make a working sentinel."""
    script = shell(compose["services"]["sentinel-1"])
    lines = re.findall(r"'(sentinel [^']*|port [^']*)'", script.split(">", 1)[0])
    assert len(lines) >= 5, script
    port = free_port()
    lines = [
        line.replace("port 26379", f"port {port}").replace(
            "redis-master 6379", f"127.0.0.1 {master.port}"
        )
        for line in lines
    ]
    directory = Path(tempfile.mkdtemp(prefix="apiworker-compose-sentinel-"))
    config = directory / "sentinel.conf"
    config.write_text("\n".join([*lines, "bind 127.0.0.1", f"dir {directory}"]) + "\n")
    binary = shutil.which("redis-server")
    assert binary is not None
    process = subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=1)
    try:

        def watching() -> dict[str, Any] | None:
            try:
                state: dict[str, Any] = client.sentinel_master("apiworker")
                return state
            except (redis.RedisError, OSError):
                return None

        state = wait_for(watching, timeout=10, what="the sentinel watching the master")
        assert isinstance(state, dict)
        assert int(state["port"]) == master.port
        assert int(state["down-after-milliseconds"]) == 5000
        assert int(state["quorum"]) == 2
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


RABBIT_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
RABBIT_CONF = REPO_ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"


def rabbit_header_environment() -> dict[str, str]:
    """The variables the file's header tells an operator to set for the rabbitmq profile."""
    header = COMPOSE_FILE.read_text().split("--profile rabbitmq", 1)[0].rsplit("\n#\n", 1)[1]
    return {
        name: value.strip("'")
        for name, value in re.findall(r"((?:RABBITMQ|CELERY)_[A-Z_]+)=(\S+)", header)
    }


def test_the_rabbitmq_profile_is_a_cluster_of_three_nodes_sharing_one_cookie(
    compose: dict[str, Any],
) -> None:
    """Three nodes, each under its own host name and volume, all given the same cookie
    and the cluster's configuration, which lists the three of them."""
    services = compose["services"]
    nodes = [services[name] for name in RABBIT_NODES]
    assert len({node["hostname"] for node in nodes}) == 3
    assert len({node["volumes"][0] for node in nodes}) == 3
    assert {node["environment"]["RABBITMQ_COOKIE"] for node in nodes} == {"${RABBITMQ_COOKIE:-}"}
    for node in nodes:
        assert ".erlang.cookie" in shell(node)
        assert any(
            str(volume).startswith("./deploy/rabbitmq/rabbitmq.conf:") for volume in node["volumes"]
        )
    conf = dict(
        line.split(" = ", 1) for line in RABBIT_CONF.read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {value for key, value in conf.items() if key.startswith("cluster_formation.classic")}
    assert listed == {f"rabbit@{node['hostname']}" for node in nodes}


def test_the_documented_rabbitmq_urls_name_every_node_and_policies_run_first(
    compose: dict[str, Any],
) -> None:
    """The header's broker and management URLs list the three nodes (a failover list the
    worker accepts); the policy service waits for the three nodes, applies the policies
    and grants the application user before any worker starts; the administrator's
    management URL goes to the policy service alone."""
    documented = rabbit_header_environment()
    broker_urls = documented["CELERY_BROKER_URL"].split(";")
    management_urls = documented["RABBITMQ_ADMIN_MANAGEMENT_URL"].split(";")
    assert [url.split("@")[1].split(":")[0] for url in broker_urls] == list(RABBIT_NODES)
    assert [url.split("@")[1].split(":")[0] for url in management_urls] == list(RABBIT_NODES)
    assert {url.rsplit("/", 1)[1] for url in broker_urls} == {"apiworker"}
    settings = WorkerSettings(
        CELERY_BROKER_URL=documented["CELERY_BROKER_URL"], REDIS_URL="redis://redis:6379/0"
    )
    assert settings.broker_url == documented["CELERY_BROKER_URL"]
    policy = compose["services"]["rabbitmq-policy"]
    assert policy["command"][:3] == ["apiworker", "rabbitmq", "apply-policy"]
    assert policy["command"][3:] == ["--wait-nodes", "3", "--grant-app-user"]
    for node in RABBIT_NODES:
        assert policy["depends_on"][node]["condition"] == "service_healthy"
    admin = "${RABBITMQ_ADMIN_MANAGEMENT_URL:-}"
    assert policy["environment"]["RABBITMQ_MANAGEMENT_URL"] == admin
    app_user = broker_urls[0].split("//", 1)[1].split(":", 1)[0]
    admin_user = management_urls[0].split("//", 1)[1].split(":", 1)[0]
    assert app_user != admin_user
    assert compose["services"][RABBIT_NODES[0]]["environment"]["RABBITMQ_DEFAULT_USER"] == (
        admin_user
    )
    for name, service in compose["services"].items():
        if name != "rabbitmq-policy":
            assert admin not in str(service.get("environment", {})), name
    for name in ("worker", "beat", "flower"):
        assert compose["services"][name]["depends_on"]["rabbitmq-policy"]["condition"] == (
            "service_completed_successfully"
        )


def test_the_rabbitmq_cluster_balances_leaders_and_keeps_three_replicas() -> None:
    """Balanced leader placement, and membership reconciliation that grows a queue back
    to three replicas (RabbitMQ 3.13's keys)."""
    conf = dict(
        line.split(" = ", 1) for line in RABBIT_CONF.read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert conf["queue_leader_locator"] == "balanced"
    assert conf["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    assert conf["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"
