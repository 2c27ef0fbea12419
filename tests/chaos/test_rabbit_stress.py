"""RabbitMQ under ordinary stress: a rolling restart, a lost connection, a consumer
timeout. Each spends deliveries without a failure; none may park a job, run a job that
had not started twice, or end the worker.

A job's runs are counted from the workers' logs, one outcome line (`job SUCCESS`,
`job RETRY`, ...) per run, by job id: a second run of a job would often make no second
upstream call (it may wait for the first run's fetch, single-flight), so upstream calls
alone would miss it. Upstream calls tell which jobs had started (each run calls first
thing); `FRESHNESS_MAX_AGE=0` so that a later run calls again rather than being served
from Redis.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from brokers import ALL_QUEUES, dead_letter_queue
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.chaos.conftest import Deployment, pokemon_names
from tests.chaos.test_worker_killed import calls_per_name, settled_calls
from tests.conftest import skip_without_rabbitmq
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import wait_for
from tests.support.rabbitmq import RabbitNode, RabbitServer, RabbitUnavailable
from tests.support.tcp_proxy import TcpProxy

FETCH = "tasks.pokemon.fetch_pokemon"
#: Jobs are counted by their upstream calls: a second run must call again.
COUNT_RUNS = {"FRESHNESS_MAX_AGE": "0"}
#: Four jobs in hand per thread (on the one queue the producer uses), so a worker holds
#: jobs it has not started; the consumer-timeout check raised to match.
DEEP_PREFETCH = {"WORKER_PREFETCH_MULTIPLIER": "4", "BROKER_CONSUMER_TIMEOUT": "3600"}
RESTARTS = 5


OUTCOME = re.compile(rf"worker\.jobs: job [A-Z]+ task={re.escape(FETCH)} id=(\S+)")
CUT_SHORT = re.compile(r"RabbitMQ admission could not move job (\S+) ")


def send(deployment: Deployment, names: list[str]) -> dict[str, str]:
    """One job per name; each job's name by its id."""
    return {deployment.producer.send_task(FETCH, args=[name]).id: name for name in names}


def runs(logs: list[str], jobs: dict[str, str]) -> Counter[str]:
    """Runs per name, from the workers' outcome lines."""
    return Counter(jobs[found] for log in logs for found in OUTCOME.findall(log) if found in jobs)


def moves_cut_short(log: str, jobs: dict[str, str]) -> set[str]:
    """The names of jobs whose move to their upstream's queue met the lost connection:
    the copy may have arrived before its confirm was lost, so they may run twice (at
    least once; worker/amqp_admission.py says so in the line)."""
    return {jobs[found] for found in CUT_SHORT.findall(log) if found in jobs}


def stored(deployment: Deployment, names: list[str]) -> set[str]:
    return {name for name in names if deployment.results.exists(f"pokemon:{name}")}


def parked(deployment: Deployment) -> dict[str, int]:
    assert deployment.rabbit is not None
    counts = deployment.rabbit.queue_counts(deployment.env["CELERY_BROKER_URL"])
    return {queue: sum(counts.get(dead_letter_queue(queue), (0, 0))) for queue in ALL_QUEUES}


@pytest.mark.broker("amqp")
def test_a_rolling_restart_parks_nothing_and_reruns_no_job_that_had_not_started(
    deploy: Callable[..., Deployment], sandbox: Any
) -> None:
    """Five warm restarts (SIGTERM, start again) under load, each while the worker holds
    jobs it has not started: every job stored, none parked, no failure record, and a job
    runs twice only if it was running at a restart."""
    deployment = deploy(**COUNT_RUNS, **DEEP_PREFETCH)
    names = pokemon_names(96)
    sandbox.latency = 0.2
    worker = deployment.start_worker(concurrency=4)
    jobs = send(deployment, names)
    running_at_a_restart: set[str] = set()
    for _ in range(RESTARTS):
        target = len(stored(deployment, names)) + 6
        wait_for(lambda: len(stored(deployment, names)) >= target, timeout=30,  # noqa: B023
                 what=f"{target} jobs stored")  # fmt: skip
        done = stored(deployment, names)
        worker.stop()  # SIGTERM: warm shutdown, running jobs finish
        running_at_a_restart |= set(calls_per_name(sandbox)) - done
        worker = deployment.start_worker(concurrency=4)
    wait_for(lambda: stored(deployment, names) == set(names), timeout=60, what="every job stored")
    wait_for(lambda: settled_calls(sandbox), timeout=10, what="no more calls")
    counted = runs([each.log() for each in deployment.workers], jobs)
    assert set(counted) == set(names)
    ran_twice = {name for name, count in counted.items() if count > 1}
    assert ran_twice <= running_at_a_restart, ran_twice - running_at_a_restart
    assert all(counted[name] <= 2 for name in ran_twice)
    assert parked(deployment) == dict.fromkeys(ALL_QUEUES, 0)
    assert deployment.failures() == []
    print(f"rolling restart x{RESTARTS}: jobs={len(names)} ran-twice={len(ran_twice)} "
          f"running-at-a-restart={len(running_at_a_restart)} parked=0")  # fmt: skip


@pytest.fixture
def tcp_proxies() -> Iterator[list[TcpProxy]]:
    """Proxies a test starts, closed after its deployment's workers have stopped (a test
    asks for this fixture before `deploy`)."""
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        proxy.close()


@pytest.mark.broker("amqp")
def test_a_lost_connection_under_threads_runs_no_unstarted_job_twice(
    tcp_proxies: list[TcpProxy], deploy: Callable[..., Deployment], sandbox: Any
) -> None:
    """Two threads, each running one slow job with three more in hand, lose the broker
    connection: the six not started are cancelled here and run once, from their
    redelivery; only the two running may run again."""
    deployment = deploy(**COUNT_RUNS, **DEEP_PREFETCH)
    names = pokemon_names(8)
    # The worker reaches the node through a proxy the test cuts in milliseconds, so the
    # jobs in hand are still waiting when the connection goes, however loaded the machine.
    proxy, through_proxy = TcpProxy.for_url(deployment.env["CELERY_BROKER_URL"])
    tcp_proxies.append(proxy)
    sandbox.latency = 5.0
    worker = deployment.start_worker(concurrency=2, CELERY_BROKER_URL=through_proxy)
    jobs = send(deployment, names)
    wait_for(lambda: len(calls_per_name(sandbox)) >= 2, timeout=20, what="two jobs running")
    assert proxy.cut()
    running = set(calls_per_name(sandbox))
    sandbox.latency = 0.2
    wait_for(lambda: stored(deployment, names) == set(names), timeout=60, what="every job stored")
    wait_for(lambda: settled_calls(sandbox, quiet=1.0), timeout=15, what="no more calls")
    counted = runs([worker.log()], jobs)
    assert set(counted) == set(names)
    ran_twice = {name for name, count in counted.items() if count > 1}
    may_run_twice = running | moves_cut_short(worker.log(), jobs)
    assert ran_twice <= may_run_twice, (
        f"not started, yet ran twice: {sorted(ran_twice - may_run_twice)}\n{worker.log()[-8000:]}"
    )
    assert worker.alive
    assert "not started yet cancelled" in worker.log(), worker.log()[-3000:]
    assert deployment.failures() == []


#: The node's consumer_timeout, and how often it checks it (RabbitMQ 3.10: once per
#: channel tick, 60 s by default, set in advanced.config).
CONSUMER_TIMEOUT_MS = 2000
TICK_MS = 500


@pytest.fixture(scope="module")
def impatient_node() -> Iterator[RabbitServer]:
    """A node of this module whose consumer_timeout is 2 s."""
    try:
        node = RabbitNode(
            config=[f"consumer_timeout = {CONSUMER_TIMEOUT_MS}"],
            advanced=f"[{{rabbit, [{{channel_tick_interval, {TICK_MS}}}]}}].",
        )
    except RabbitUnavailable as exc:
        skip_without_rabbitmq(exc)
    try:
        node.start()
        yield RabbitServer.of_node(node)
    finally:
        node.cleanup()


def test_a_consumer_timeout_shorter_than_a_job_leaves_the_worker_serving(
    impatient_node: RabbitServer, redis_server_url: str, sandbox: Any
) -> None:
    """A job outlasts the server's consumer_timeout (the worker misconfigured to believe
    the default 30 minutes): RabbitMQ closes the channel, the worker reconnects instead
    of exiting, and the job is delivered again exactly once: the redelivery waits for
    the first run's fetch (single-flight) and finishes with it, one upstream call."""
    vhost_url = impatient_node.create_vhost()
    env = worker_environment(
        redis_server_url, sandbox,
        REDIS_URL=with_db(redis_server_url, 13), CELERY_BROKER_URL=vhost_url,
        CELERY_RESULT_BACKEND=with_db(redis_server_url, 14),
        HTTP_READ_TIMEOUT="10",  # the slow call is the job outlasting the timeout
        # The redelivery waits for the first run's fetch instead of deferring itself.
        SINGLE_FLIGHT_WAIT_SECONDS="10",
        # Nor is it moved aside by a budget's slow start (one job in hand is all the
        # room a fresh budget gives): this counts the consumer timeout's redelivery.
        BUDGET_ADAPTIVE="false",
        **COUNT_RUNS,
    )  # fmt: skip
    results = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    results.flushdb()
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env, concurrency=2)
    try:
        worker.start(producer)
        sandbox.latency = 2 * CONSUMER_TIMEOUT_MS / 1000
        job = producer.send_task(FETCH, args=["pikachu"])
        wait_for(lambda: calls_per_name(sandbox), timeout=20, what="the slow call")
        sandbox.latency = 0.0
        successes = f"job SUCCESS task={FETCH} id={job.id}"
        wait_for(lambda: worker.log().count(successes) >= 2, timeout=30,
                 what="the first run and the redelivery done")  # fmt: skip
        wait_for(lambda: impatient_node.queue_counts(vhost_url)["celery"] == (0, 0),
                 timeout=10, what="the queue empty and acknowledged")  # fmt: skip
        log = worker.log()
        assert log.count("PRECONDITION_FAILED - delivery acknowledgement") == 1, log[-4000:]
        assert log.count(successes) == 2, log[-4000:]
        assert calls_per_name(sandbox) == {"pikachu": 1}
        assert worker.alive, log[-3000:]
        assert "Unrecoverable error" not in log
        assert results.exists("pokemon:pikachu")
        assert results.xlen("events:failures") == 0
    finally:
        sandbox.latency = 0.0
        worker.stop()
        producer.close()
        results.close()
        impatient_node.delete_vhost(vhost_url)
