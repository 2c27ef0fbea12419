"""A RabbitMQ node dies under a working cluster: the worker and producers fail over.

Three private nodes in one cluster (tests/support/rabbit_cluster.py), the worker and the
producer given the failover URL `amqp://…@n1/v;amqp://…@n2/v;amqp://…@n3/v` with an
application user of this test's own (no tags, rights on its own queues and exchanges)
whose password is unique. The worker tries the nodes in an order of its own and the
policies place leaders balanced, so node 1 holds some of the connections and leaders,
not all. Jobs flow with 100 ms of upstream latency; node 1 is SIGKILLed. Asserted:
every queue had a replica on each node; a new leader is elected on a surviving node;
the same worker process consumes on and every job is stored (none lost) within the
bound; no publish, the producer's or the worker's own, ends as a failure record; each
job's runs are counted (upstream calls with FRESHNESS_MAX_AGE=0, and the worker's
outcome lines): only jobs in flight at the kill run twice; jobs sent after the kill are
accepted (the producer fails over too); `apiworker health`
and `apiworker queues` name the dead node and each queue's leader and members; the
worker's log has no traceback for the expected connection loss; the password appears in
no log, CLI output or metrics page. Then the killed node is started again (same name,
same data): it runs in the cluster again and every queue has its three members online
again, within a bound; both times are printed.

The cluster starts once for this module (about 20 to 30 s); the scenario itself takes
about 15 s, the restart and rejoin about 10 s more. The loop for the figures in docs/reliability.md:

    for i in $(seq 10); do .venv/bin/pytest tests/chaos/test_cluster_failover.py -q -s \
        -p no:cacheprovider | grep "node killed"; done
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import kombu.exceptions
import pytest
import redis
import requests
from click.testing import CliRunner

from brokers import ALL_QUEUES
from brokers.amqp import APP_PERMISSION_PATTERN
from ops.cli import cli
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.chaos.conftest import pokemon_names, scaled
from tests.chaos.test_rabbit_stress import runs
from tests.chaos.test_worker_killed import calls_per_name, settled_calls
from tests.conftest import skip_without_rabbitmq
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for
from tests.support.rabbit_cluster import RabbitCluster
from tests.support.rabbitmq import RabbitUnavailable, vhost_of
from tests.support.redis_server import free_port

FETCH = "tasks.pokemon.fetch_pokemon"
#: From the kill to the last job stored (the issue's bound; measured 1.1 to 1.6 s).
#: RabbitMQ notices the dead node and elects new leaders within a few seconds; the
#: worker reconnects to the next URL at once.
RECOVERY_SECONDS = 10.0
#: From the restart of the killed node to its running in the cluster again with every
#: queue's replica on it online: a boot (about 5 s here, longer on a busy machine) and
#: the replicas catching up.
REJOIN_SECONDS = 60.0
#: How long a producer retries a refused publish (the README's recipe).
PUBLISH_RETRY_SECONDS = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    if os.environ.get("TEST_AMQP_URL"):
        pytest.skip("the cluster scenario needs private nodes, not TEST_AMQP_URL")
    try:
        made = RabbitCluster()
    except RabbitUnavailable as exc:
        skip_without_rabbitmq(exc)
    try:
        yield made.start()
    finally:
        made.cleanup()


def add_user(cluster: RabbitCluster, vhost: str, password: str) -> str:
    """An application user of this test alone, as the README sets one up: no tags, and
    rights on `vhost`'s own queues and exchanges only; its name."""
    name = f"apiworker-{secrets.token_hex(4)}"
    base = f"http://127.0.0.1:{cluster.nodes[0].management_port}/api"
    auth = ("guest", "guest")
    requests.put(f"{base}/users/{name}", json={"password": password, "tags": ""},
                 auth=auth, timeout=10).raise_for_status()  # fmt: skip
    requests.put(f"{base}/permissions/{vhost}/{name}",
                 json=dict.fromkeys(("configure", "write", "read"), APP_PERMISSION_PATTERN),
                 auth=auth, timeout=10).raise_for_status()  # fmt: skip
    return name


def with_user(url: str, user: str, password: str) -> str:
    """Every URL of a failover list with this user instead of guest."""
    return ";".join(one.replace("guest:guest@", f"{user}:{password}@", 1) for one in url.split(";"))


# pytest-timeout counts the fixtures' setup too: this module's starts and clusters three
# RabbitMQ nodes (each `rabbitmqctl` call an Erlang VM of its own), and the test restarts
# one and waits up to REJOIN_SECONDS for it to rejoin. On a loaded 2-core machine that
# passes the suite's 120 s before anything has hung.
@pytest.mark.timeout(360)
def test_a_dead_node_costs_no_job_and_the_worker_consumes_on(
    cluster: RabbitCluster, redis_server_url: str, sandbox: Any
) -> None:
    """Kill the node everyone is connected to, mid-flow: no job lost, the same worker
    serves on from another node, the operator's commands name the dead node, and the
    password is nowhere."""
    server = cluster.server()
    vhost_url = server.create_vhost()
    vhost = vhost_of(vhost_url)
    password = f"pw-{secrets.token_hex(12)}"
    user = add_user(cluster, vhost, password)
    broker_url = with_user(cluster.failover_url(vhost_url), user, password)
    metrics_port = free_port()
    env = worker_environment(
        redis_server_url,
        sandbox,
        REDIS_URL=with_db(redis_server_url, 11),
        CELERY_BROKER_URL=broker_url,
        CELERY_RESULT_BACKEND=with_db(redis_server_url, 12),
        METRICS_PORT=str(metrics_port),
        # Every run of a job calls the upstream (none served from Redis): calls count runs.
        FRESHNESS_MAX_AGE="0",
        # A job in flight is one that has called the upstream. The slow start of an
        # upstream with no rate known would keep started jobs waiting for a token, not
        # yet calling: running at the kill, run again from their redelivery, yet not
        # counted as in flight.
        BUDGET_ADAPTIVE="false",
    )
    results = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    results.flushdb()
    producer = producer_app(broker_url, env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env, concurrency=16)
    cli_env = {**env, "RABBITMQ_MANAGEMENT_URL": cluster.management_urls}
    outputs: list[str] = []
    names = pokemon_names(scaled(120))
    first, second = names[: len(names) // 2], names[len(names) // 2 :]
    sandbox.latency = 0.1
    try:
        worker.start(producer, timeout=60)
        for queue in ALL_QUEUES:  # a replica on every node before anything dies
            members = cluster.queue(vhost, queue)["members"]
            assert sorted(members) == sorted(n.name for n in cluster.nodes), (queue, members)  # type: ignore[arg-type]
        jobs = {producer.send_task(FETCH, args=[name]).id: name for name in first}
        wait_for(lambda: results.exists(*keys(first)) >= 10, timeout=30, what="10 jobs stored")

        dead = cluster.nodes[0]
        stored_at_kill = {name for name in first if results.exists(f"pokemon:{name}")}
        dead.kill()
        killed_at = time.monotonic()
        # Started (each run calls first thing) and not stored: in flight at the kill.
        in_flight = set(calls_per_name(sandbox)) - stored_at_kill
        nacked = 0
        for name in second:  # the producer fails over to a live node
            sent, refused = send_retrying(producer, name)
            jobs[sent] = name
            nacked += refused
        published = time.monotonic() - killed_at
        wait_for(lambda: results.exists(*keys(names)) == len(set(names)),
                 timeout=RECOVERY_SECONDS, what="every job stored")  # fmt: skip
        recovered = time.monotonic() - killed_at
        assert worker.alive, "the worker process must serve on, not exit"
        # No publish (the producer's, the worker's own) ended as a failure record, and
        # only jobs in flight at the kill ran twice.
        assert results.xlen("events:failures") == 0, results.xrange("events:failures")
        calls = wait_for(lambda: settled_calls(sandbox), timeout=10, what="no more calls")
        assert isinstance(calls, dict)
        assert set(calls) == set(names)
        counted = runs([worker.log()], jobs)
        ran_twice = {name for name, count in counted.items() if count > 1}
        ran_twice |= {name for name, count in calls.items() if count > 1}
        assert ran_twice <= in_flight, ran_twice - in_flight

        leader = wait_for(lambda: cluster.queue(vhost, "celery").get("leader") != dead.name
                          and cluster.queue(vhost, "celery")["leader"],
                          timeout=20, what="a new leader")  # fmt: skip
        health = CliRunner().invoke(cli, ["health", "--timeout", "5"], env=cli_env)
        outputs.append(health.output)
        assert f"{dead.name} (DOWN)" in health.output, health.output
        assert f"celery: leader {leader};" in health.output, health.output
        queues = CliRunner().invoke(cli, ["queues"], env=cli_env)
        outputs.append(queues.output)
        assert queues.exit_code == 0, queues.output
        assert f"{dead.name}(offline)" in queues.output, queues.output

        log = worker.log()
        assert "Traceback" not in log, log[-3000:]
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        for place, text in {"worker log": log, "metrics": metrics, "cli": "".join(outputs)}.items():
            assert password not in text, place

        # The killed node comes back: it rejoins the cluster, and every queue has its
        # three members again, all online (a dead member stays in `members`, offline).
        restarted_at = time.monotonic()
        dead.start()
        booted = time.monotonic() - restarted_at
        cluster.wait_running(len(cluster.nodes), timeout=REJOIN_SECONDS)
        running = time.monotonic() - restarted_at
        everyone = sorted(node.name for node in cluster.nodes)
        wait_for(lambda: all(replicas_online(cluster, vhost, queue) == everyone
                             for queue in ALL_QUEUES),
                 timeout=max(REJOIN_SECONDS - running, 1.0), interval=0.2,
                 what="every queue's three members online")  # fmt: skip
        rejoined = time.monotonic() - restarted_at
        print(
            f"node killed: sent={len(names)} stored={results.exists(*keys(names))} lost=0 "
            f"failure-records=0 upstream-calls={sum(calls.values())} "
            f"in-flight-at-kill={len(in_flight)} ran-twice={len(ran_twice)} "
            f"publishes-refused={nacked} second-half-published-in={published:.1f}s "
            f"recovered-in={recovered:.1f}s (bound {RECOVERY_SECONDS:g}s) new-leader={leader} "
            f"restarted: booted-in={booted:.1f}s running-in-cluster={running:.1f}s "
            f"queues-three-members-in={rejoined:.1f}s (bound {REJOIN_SECONDS:g}s)"
        )
    finally:
        sandbox.latency = 0.0
        worker.stop()
        producer.close()
        results.close()
        if not cluster.nodes[0].alive:
            cluster.nodes[0].start()


def send_retrying(producer: Any, name: str) -> tuple[str, int]:
    """Send a job, trying again every 0.5 s while RabbitMQ refuses it beyond the
    producer's own retry policy (a queue whose leader died nacks publishes until a new
    one is elected); its id and the refusals that reached this loop."""
    deadline = time.monotonic() + PUBLISH_RETRY_SECONDS
    refused = 0
    while True:
        try:
            return producer.send_task(FETCH, args=[name]).id, refused
        except kombu.exceptions.OperationalError:
            refused += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def replicas_online(cluster: RabbitCluster, vhost: str, queue: str) -> list[str]:
    """The nodes where `queue` has a member that is online, sorted; none while a member
    is missing from `members`."""
    found = cluster.queue(vhost, queue)
    members, online = found.get("members") or [], found.get("online") or []
    assert isinstance(members, list), found
    assert isinstance(online, list), found
    return sorted(online) if sorted(members) == sorted(online) else []


def keys(names: list[str]) -> list[str]:
    return [f"pokemon:{name}" for name in names]
