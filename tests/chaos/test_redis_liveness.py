"""The Redis broker's liveness under stress: a paused Redis and a rolling deploy re-run
nothing.

Every long job in flight must be delivered once and stored once:

- **Redis paused** 7 s (`DEBUG SLEEP`, as a fork, a slow command or a failover pause
  it) while 16 jobs run on two worker processes: when Redis answers again every
  heartbeat is 7 s old, the rescuers' own too, so nobody is rescued
  (brokers/redis_scripts.py, HEARTBEAT).
- **Rolling deploy**: SIGTERM to one of two hosts while its jobs run, each longer than
  the heartbeat timeout, with the threads, prefork, solo, gevent and eventlet pools:
  the stopping host heartbeats on its own thread until its last job is acknowledged, so
  the other host takes none of them.

The jobs last a few seconds (the sandbox answers slowly), longer than the 5 s heartbeat
timeout, which is what a lapsed heartbeat would need to show; every other setting is the
default. Runs are counted from the workers' own line per job, not from upstream calls,
which single flight would merge.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brokers import redis_scripts as keys
from ops.processes.worker import WorkerProcess
from tests.chaos.conftest import FETCH, Deployment, pokemon_names
from tests.support.celery_worker import wait_for
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.broker("redis")

#: The worker's line for each job run to its end (worker.jobs), success or failure; a
#: deferral's RETRY lines are not counted (a deferred job ends in one of these later).
RAN = re.compile(r"job (?:SUCCESS|FAILURE) task=\S+ id=([0-9a-f-]{36})")
PAUSE_SECONDS = 7
# Longer than the 5 s heartbeat timeout: a holder whose heartbeat stopped when a job
# began would be rescued while the job still ran.
JOB_SECONDS = 8.0


@pytest.fixture(scope="module")
def debug_redis() -> Iterator[str]:
    """A redis-server of this module that accepts `DEBUG SLEEP` from loopback."""
    server = RedisServer(args=("--enable-debug-command", "local")).start()
    try:
        yield server.url
    finally:
        server.cleanup()


def deliveries(workers: list[WorkerProcess]) -> Counter[str]:
    """Runs per task id, over every worker's log."""
    return Counter(task_id for worker in workers for task_id in RAN.findall(worker.log()))


def assert_each_delivered_and_stored_once(
    deployment: Deployment, sandbox: Any, names: list[str], task_ids: list[str]
) -> None:
    keys = [f"pokemon:{name}" for name in names]
    wait_for(lambda: deployment.results.exists(*keys) == len(keys), timeout=60,
             what="every job stored")  # fmt: skip
    # A job's line follows its stored result: wait for every line, then count.
    wait_for(lambda: set(task_ids) <= set(deliveries(deployment.workers)), timeout=30,
             what="every job's line in the logs")  # fmt: skip
    counted = deliveries(deployment.workers)
    assert {task_id: counted[task_id] for task_id in task_ids} == dict.fromkeys(task_ids, 1)
    calls = Counter(
        {path.rsplit("/", 1)[-1]: count for path, count in sandbox.calls_by_path("pokemon").items()}
    )
    assert calls == Counter(names)
    assert deployment.failures() == []
    assert deployment.broker is not None
    assert [key for key in deployment.broker.keys("*.dead")] == []
    logs = "".join(worker.log() for worker in deployment.workers)
    assert "of a dead worker back" not in logs
    assert "declared dead" not in logs


def test_a_redis_paused_seven_seconds_rescues_nothing(
    deploy, debug_redis: str, sandbox: Any
) -> None:
    """Two worker processes of 8 threads run 16 jobs; Redis sleeps 7 s in the middle:
    every job is delivered once, stored once, and nothing is parked."""
    deployment: Deployment = deploy(
        redis_url=debug_redis,
        HTTP_READ_TIMEOUT="30",  # the slow upstream is not a hung one
        WORKER_PREFETCH_MULTIPLIER="1",  # each process takes only what it runs
    )
    for _ in range(2):
        deployment.workers.append(
            WorkerProcess(deployment.env, concurrency=8).start(deployment.producer)
        )
    names = pokemon_names(16)
    sandbox.latency = JOB_SECONDS
    task_ids = [deployment.producer.send_task(FETCH, args=[name]).id for name in names]
    wait_for(lambda: sandbox.calls("pokemon") == 16, timeout=30, what="all 16 jobs running")
    sleeper = redis.Redis.from_url(debug_redis, socket_timeout=PAUSE_SECONDS * 4)
    try:
        sleeper.execute_command("DEBUG", "SLEEP", PAUSE_SECONDS)
    finally:
        sleeper.close()
    assert_each_delivered_and_stored_once(deployment, sandbox, names, task_ids)


def holding(deployment: Deployment, hosts: list[WorkerProcess]) -> list[WorkerProcess]:
    """The hosts with messages in hand (a holder's id names its process)."""
    assert deployment.broker is not None
    pids = {
        int(key.decode().rsplit(".", 2)[-2])
        for key in deployment.broker.scan_iter(keys.INHAND_PREFIX + "*")
        if deployment.broker.hlen(key)
    }
    return [host for host in hosts if host.process is not None and host.process.pid in pids]


@pytest.mark.parametrize(
    ("pool", "concurrency", "jobs"),
    [("threads", 4, 8), ("prefork", 4, 8), ("solo", 1, 1), ("gevent", 4, 8), ("eventlet", 4, 8)],
)
def test_a_rolling_deploy_re_runs_no_job(
    deploy, sandbox: Any, pool: str, concurrency: int, jobs: int
) -> None:
    """Two hosts, long jobs running; SIGTERM to a host that runs some: it finishes them
    and leaves, and the other host takes none of them. (Solo: one job, so the other host
    is idle, free to rescue, while the job runs on its host's event loop thread. The
    green pools: their jobs all run at once only if the process was monkey-patched before
    it imported anything, and the heartbeat is a green thread beating as jobs yield.)"""
    deployment: Deployment = deploy(
        HTTP_READ_TIMEOUT="30",
        WORKER_PREFETCH_MULTIPLIER="1",
    )
    hosts = []
    for _ in range(2):
        worker = WorkerProcess(deployment.env, pool=pool, concurrency=concurrency)
        deployment.workers.append(worker)
        hosts.append(worker.start(deployment.producer))
    names = pokemon_names(jobs)
    sandbox.latency = JOB_SECONDS
    task_ids = [deployment.producer.send_task(FETCH, args=[name]).id for name in names]
    wait_for(lambda: sandbox.calls("pokemon") == len(names), timeout=30,
             what="every job running")  # fmt: skip
    leaving = holding(deployment, hosts)[0]
    process = leaving.process
    assert process is not None
    os.killpg(process.pid, signal.SIGTERM)
    wait_for(lambda: process.poll() is not None, timeout=60,
             what="the stopping host gone after its jobs")  # fmt: skip
    assert_each_delivered_and_stored_once(deployment, sandbox, names, task_ids)


def test_a_worker_declared_dead_does_not_run_the_jobs_it_had_not_started(
    deploy, sandbox: Any
) -> None:
    """A worker holding four jobs (one running, three queued for its one thread) is
    paused (SIGSTOP) past the heartbeat timeout; another worker rescues and stores all
    four. Resumed, the first learns at its next heartbeat that it was declared dead and
    drops the three it had not started: it runs only the one it was running."""
    deployment: Deployment = deploy(HTTP_READ_TIMEOUT="40", WORKER_PREFETCH_MULTIPLIER="4")
    paused = WorkerProcess(deployment.env, concurrency=1)
    deployment.workers.append(paused)
    paused.start(deployment.producer)
    running_seconds = 18.0
    sandbox.inject("pokemon", "latency", seconds=running_seconds, times=1)
    names = pokemon_names(4)
    for name in names:
        deployment.producer.send_task(FETCH, args=[name])
    started = time.monotonic()
    wait_for(lambda: sandbox.calls("pokemon") == 1, timeout=30, what="the first job running")
    assert deployment.broker is not None
    wait_for(lambda: deployment.broker.llen("celery") == 0, timeout=10,
             what="all four in the first worker's hands")  # fmt: skip
    assert paused.process is not None
    os.killpg(paused.process.pid, signal.SIGSTOP)
    try:
        rescuer = WorkerProcess(deployment.env, concurrency=4)
        deployment.workers.append(rescuer)
        rescuer.start(deployment.producer)
        keys = [f"pokemon:{name}" for name in names]
        wait_for(lambda: deployment.results.exists(*keys) == len(keys), timeout=60,
                 what="the rescuer storing all four")  # fmt: skip
        assert time.monotonic() - started < running_seconds - 3, "too slow to test the drop"
    finally:
        os.killpg(paused.process.pid, signal.SIGCONT)
    wait_for(lambda: "declared dead: 3 job(s) not started" in paused.log(), timeout=15,
             what="the resumed worker dropping its three unstarted jobs")  # fmt: skip
    wait_for(lambda: deliveries([paused]), timeout=running_seconds + 10,
             what="the resumed worker ending the job it was running")  # fmt: skip
    calls = wait_for(lambda: settled_calls(sandbox), timeout=10, what="no further call")
    assert calls == 1 + len(names)  # its own running job, and the rescuer's four
    assert sum(deliveries([paused]).values()) == 1
    assert sum(deliveries([rescuer]).values()) == len(names)


def settled_calls(sandbox: Any, quiet: float = 1.0) -> int | None:
    """The upstream's call count once none arrived for `quiet` seconds, else None."""
    before = sandbox.calls("pokemon")
    time.sleep(quiet)  # the window in which nothing may arrive, not a synchronisation
    return before if sandbox.calls("pokemon") == before else None
