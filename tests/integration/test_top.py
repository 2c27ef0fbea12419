"""`apiworker top`: the fleet on one screen, read as an operator reads it.

`--once` through the CLI runner; the live screen in a real terminal (tmux), read with
`capture-pane` while jobs flow: the queue's depth and jobs/s change on screen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner

from apis.budget import Budget, budget_keys
from apis.config import RateLimitPolicy, UpstreamConfig
from ops.cli import cli
from ops.processes.worker import WorkerProcess
from sandbox.pokeapi import load_catalogue
from tests.support.celery_worker import REPO_ROOT, wait_for

FETCH = "tasks.pokemon.fetch_pokemon"
APIWORKER = Path(sys.executable).with_name("apiworker")


def queue_row(screen: str, queue: str) -> tuple[int, int] | None:
    """(ready, in hand) of `queue` as the screen shows it ("-", unknown, as 0)."""
    found = re.search(rf"│ {queue}\s+│\s+(\d+) │\s+(\d+|-) │", screen)
    if not found:
        return None
    in_hand = found.group(2)
    return int(found.group(1)), 0 if in_hand == "-" else int(in_hand)


def jobs_per_second(screen: str) -> float | None:
    """The jobs/s figure of the "last minute" table (the row under its header)."""
    lines = screen.splitlines()
    for index, line in enumerate(lines):
        if "jobs/s" in line and "failures/s" in line:
            for below in lines[index + 1 : index + 4]:
                numbers = re.findall(r"│\s+([\d.]+|-)\s+", below)
                if numbers:
                    return None if numbers[0] == "-" else float(numbers[0])
    return None


def test_once_prints_queues_workers_rates_and_breakers(
    worker_env: dict[str, str], celery_worker: WorkerProcess, producer: Celery,
    results: redis.Redis, broker_kind: str,
) -> None:  # fmt: skip
    """One snapshot: every queue, the session's worker, a jobs/s seeded from the last
    minute of the results stream, and each upstream's breaker closed."""
    producer.send_task(FETCH, args=["charizard"]).get(timeout=30)
    outcome = CliRunner().invoke(cli, ["top", "--once"], env=worker_env)
    assert outcome.exit_code == 0, outcome.output
    screen = outcome.output
    for queue in ("pokeapi", "cms", "semaphore", "celery"):
        assert queue_row(screen, queue) is not None, screen
    assert celery_worker.name in screen
    rate = jobs_per_second(screen)
    assert rate is not None, screen
    assert rate > 0, screen
    for service in ("pokeapi", "cms", "semaphore"):
        assert re.search(rf"│ {service}\s+│ closed", screen), screen


@pytest.fixture
def tmux() -> Iterator[str]:
    """A tmux server of this test alone; killed after."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true needs tmux for the terminal tests (make test installs it)")
        pytest.skip("tmux is not installed")
    socket = f"apiworker-top-{uuid.uuid4().hex[:8]}"
    yield socket
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


@pytest.mark.broker("redis")
def test_the_live_screen_follows_jobs_as_they_flow(
    tmux: str, worker_env: dict[str, str], celery_worker: WorkerProcess, producer: Celery,
    results: redis.Redis, sandbox: Any, broker_kind: str,
) -> None:  # fmt: skip
    """`apiworker top` in a terminal: 60 slow jobs show as waiting on the pokeapi queue,
    then drain, and jobs/s rises above zero, all on the refreshed screen."""
    env = {**os.environ, **worker_env, "TERM": "xterm-256color", "COLUMNS": "120"}
    subprocess.run(
        ["tmux", "-L", tmux, "new-session", "-d", "-s", "top", "-x", "120", "-y", "60",
         f"{APIWORKER} top --interval 0.3"],
        env=env, cwd=REPO_ROOT, check=True,
    )  # fmt: skip

    def screen() -> str:
        return subprocess.run(
            ["tmux", "-L", tmux, "capture-pane", "-p", "-t", "top"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    wait_for(lambda: queue_row(screen(), "pokeapi") is not None, timeout=20, what="the screen")
    sandbox.latency = 0.3  # the session worker's 8 threads take 60 jobs in about 2 s
    names = load_catalogue().names[100:160]
    for name in names:
        producer.send_task(FETCH, args=[name], queue="pokeapi")
    busy = wait_for(
        lambda: (row := queue_row(screen(), "pokeapi")) and sum(row) > 0 and row,
        timeout=10, what="jobs waiting or in hand on screen",
    )  # fmt: skip
    keys = [f"pokemon:{name}" for name in names]
    wait_for(lambda: results.exists(*keys) == len(keys), timeout=60, what="the jobs stored")
    wait_for(lambda: queue_row(screen(), "pokeapi") == (0, 0), timeout=10, what="drained")
    rate = wait_for(lambda: jobs_per_second(screen()), timeout=10, what="jobs/s on screen")
    assert busy
    assert rate is not None
    assert rate > 0


def test_budgets_show_an_upstream_pausing_the_fleet(
    worker_env: dict[str, str], celery_worker: WorkerProcess, results: redis.Redis,
) -> None:  # fmt: skip
    """A 429 with Retry-After 30 to pokeapi (configured 40/s): `top` shows its rate cut,
    the configured rate, the pause left and the other upstreams unbounded; `health`
    names the upstream pausing the fleet."""
    env = {**worker_env, "POKEAPI_RATE_LIMIT": "40"}
    config = UpstreamConfig(
        "pokeapi", "http://x", state_redis_url=env["REDIS_URL"],
        rate_limit=RateLimitPolicy(rate=40),
    )  # fmt: skip
    Budget(config).answered(429, 30)
    try:
        screen = CliRunner().invoke(cli, ["top", "--once"], env=env).output
        row = re.search(r"│ pokeapi\s+│\s+28\s+│\s+40\s+│\s+(\d+\.\d)s\s+│\s+0\s+│", screen)
        assert row is not None, screen
        assert 25 < float(row.group(1)) <= 30
        assert re.search(r"│ cms\s+│\s+unbounded\s+│\s+none\s+│\s+-\s+│", screen), screen
        health = CliRunner().invoke(cli, ["health"], env=env).output
        assert re.search(r"budget\s+pokeapi is pausing the fleet: \d+\.\ds left", health), health
    finally:
        results.delete(*budget_keys("", "pokeapi"))
