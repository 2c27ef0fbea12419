"""`apiworker` against the private Redis, the session worker and the sandbox upstream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from ops.cli import cli
from ops.processes.worker import WorkerProcess
from tests.integration.conftest import with_db
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.rabbitmq import RabbitServer
from tests.support.redis_server import free_port

CHARIZARD = {
    "id": 6,
    "name": "charizard",
    "image": "https://raw.githubusercontent.com/PokeAPI/sprites/master/sprites/pokemon/6.png",
    "height": "170 cm",
    "weight": "90.5 kg",
}
FETCH = "tasks.pokemon.fetch_pokemon"
TIMEOUT = 30

Run = Callable[..., Result]
Entry = tuple[str, dict[str, str]]


@pytest.fixture
def run(worker_env: dict[str, str]) -> Run:
    """Invoke the CLI in-process with the worker's environment, plus overrides."""

    def invoke(*args: str, **env: str | None) -> Result:
        return CliRunner().invoke(cli, list(args), env={**worker_env, **env})

    return invoke


def entries(results: redis.Redis, stream: str) -> list[Entry]:
    return cast(list[Entry], results.xrange(stream))


def wait_for_failures(results: redis.Redis) -> list[Entry]:
    """The failure stream once it holds a record (the worker writes it after the result)."""
    found = wait_for(
        lambda: entries(results, "events:failures"), timeout=TIMEOUT, what="a failure record"
    )
    return cast(list[Entry], found)


def test_enqueue_wait_prints_the_exact_result(run: Run, results: redis.Redis) -> None:
    """`enqueue --wait` prints the job id, then charizard's exact JSON; exit 0."""
    outcome = run("enqueue", FETCH, "charizard", "--wait", "--timeout", str(TIMEOUT))
    assert outcome.exit_code == 0, outcome.output
    job_id, value = outcome.stdout.splitlines()
    assert json.loads(value) == CHARIZARD
    assert results.hget("meta:{pokemon:charizard}", "task_id") == job_id


def test_enqueue_without_wait_stores_the_result_but_no_backend_copy(
    run: Run, results: redis.Redis, worker_env: dict[str, str]
) -> None:
    """Without --wait nobody reads the job's result-backend entry: the job is sent with
    `ignore_result=True`, so the result and its metadata are stored, the copy is not."""
    outcome = run("enqueue", FETCH, "squirtle")
    assert outcome.exit_code == 0, outcome.output
    job_id = outcome.stdout.strip()
    wait_for(
        lambda: results.hget("meta:{pokemon:squirtle}", "task_id") == job_id,
        timeout=TIMEOUT,
        what="squirtle stored by the job",
    )
    backend = redis.Redis.from_url(worker_env["CELERY_RESULT_BACKEND"])
    try:
        assert not backend.exists(f"celery-task-meta-{job_id}")
    finally:
        backend.close()


def test_enqueue_wait_prints_each_retry_as_it_happens(
    run: Run, results: redis.Redis, sandbox: Any
) -> None:
    """Four 503s use up the client's attempts: the job is retried by Celery, `--wait`
    says so with the error on stderr, then prints the result; exit 0."""
    sandbox.inject("pokemon", "status", status=503, times=4)
    outcome = run("enqueue", FETCH, "pikachu", "--wait", "--timeout", str(TIMEOUT))
    assert outcome.exit_code == 0, outcome.output
    assert re.search(r"^retry 1: ServerError: ", outcome.stderr, re.MULTILINE), outcome.stderr
    assert json.loads(outcome.stdout.splitlines()[1])["name"] == "pikachu"


def test_enqueue_wait_follows_a_fan_out_to_its_end(run: Run, results: redis.Redis) -> None:
    """`refresh_catalog --wait` prints its summary, then follows its child jobs until
    every one has ended: all done, none failed, and the catalogue's names stored."""
    outcome = run("enqueue", "tasks.pokemon.refresh_catalog", "--wait", "--timeout", "60")
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.stdout.splitlines()[1])
    jobs = summary["jobs"]
    assert f"child jobs: {jobs} done, 0 failed, {jobs} in all" in outcome.stderr
    for name in ("charizard", "pikachu", "mew"):  # POKEMON_CATALOG of the suite's worker
        assert results.exists(f"pokemon:{name}")


def test_enqueue_unknown_task_is_refused_with_the_valid_names(run: Run) -> None:
    """A typo in the task name exits 2 before anything is sent, listing valid names."""
    outcome = run("enqueue", "tasks.pokemon.fetch_pokmon", "charizard")
    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    assert "did you mean tasks.pokemon.fetch_pokemon" in outcome.stderr
    assert "tasks.semaphore.sync_all_projects" in outcome.stderr


def test_enqueue_wrong_arguments_is_a_usage_error(run: Run) -> None:
    """A missing argument or an unknown keyword exits 2."""
    assert run("enqueue", FETCH).exit_code == 2
    outcome = run("enqueue", "tasks.cms.sync_articles", "--kwargs", '{"slug": "x"}')
    assert outcome.exit_code == 2
    assert "unknown keyword argument(s): slug" in outcome.stderr


def test_enqueue_wait_on_an_unknown_name_exits_1(run: Run, results: redis.Redis) -> None:
    """A 404 upstream: FAILURE, the error type and message on stderr, exit 1."""
    outcome = run("enqueue", FETCH, "missingno", "--wait", "--timeout", str(TIMEOUT))
    assert outcome.exit_code == 1
    [job_id] = outcome.stdout.splitlines()
    assert f"job {job_id} FAILURE: NotFound:" in outcome.stderr
    assert "not found" in outcome.stderr


def test_enqueue_wait_times_out_when_no_worker_serves_the_broker(
    run: Run, redis_server_url: str
) -> None:
    """--wait gives up after --timeout with exit 1, having printed the job id, and says
    that no worker consumes the job's queue and where to look."""
    idle = with_db(redis_server_url, 3)
    try:
        outcome = run(
            "enqueue", FETCH, "pikachu", "--wait", "--timeout", "0.5", CELERY_BROKER_URL=idle
        )
    finally:
        redis.Redis.from_url(idle).flushdb()
    assert outcome.exit_code == 1
    [job_id] = outcome.stdout.splitlines()
    assert f"timed out after 0.5s waiting for job {job_id} (state PENDING)" in outcome.stderr
    assert "no worker consumes queue pokeapi; apiworker health" in outcome.stderr
    assert len(outcome.stderr.splitlines()) == 1, outcome.stderr


def test_enqueue_wait_times_out_naming_the_workers_that_consume_the_queue(
    run: Run, results: redis.Redis, celery_worker: WorkerProcess, sandbox: Any
) -> None:
    """A worker consumes the queue but the job outlasts --timeout (a slow upstream): the
    line names that worker, the backlog command and `apiworker health`."""
    sandbox.latency = 3.0
    outcome = run("enqueue", FETCH, "pikachu", "--wait", "--timeout", "1")
    assert outcome.exit_code == 1
    assert f"1 worker(s) consume queue pokeapi ({celery_worker.name})" in outcome.stderr
    assert "apiworker queues" in outcome.stderr
    assert "apiworker health" in outcome.stderr


def test_result_prints_the_stored_value_and_meta(
    run: Run, producer: Celery, results: redis.Redis
) -> None:
    """`result pokemon charizard` prints the stored JSON; --meta adds the hash."""
    job = producer.send_task(FETCH, args=["charizard"])
    job.get(timeout=TIMEOUT)
    outcome = run("result", "pokemon", "charizard")
    assert outcome.exit_code == 0
    assert outcome.stdout.rstrip("\n") == results.get("pokemon:charizard")
    assert json.loads(outcome.stdout) == CHARIZARD
    value, meta = run("result", "pokemon", "charizard", "--meta").stdout.splitlines()
    assert json.loads(value) == CHARIZARD
    assert json.loads(meta)["task_id"] == job.id


def test_result_by_id_finds_the_canonical_name(
    run: Run, producer: Celery, results: redis.Redis
) -> None:
    """A job sent with the id 6 stores `pokemon:charizard`; `result pokemon 6` finds it
    through `index:pokemon-ids`."""
    producer.send_task(FETCH, args=["6"]).get(timeout=TIMEOUT)
    outcome = run("result", "pokemon", "6")
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout) == CHARIZARD


def test_result_of_an_unknown_kind_lists_the_valid_ones(run: Run, results: redis.Redis) -> None:
    """`result foo bar`: a usage error (exit 2) naming every kind the upstreams store."""
    outcome = run("result", "foo", "bar")
    assert outcome.exit_code == 2
    for kind in ("pokemon", "article", "semaphore-pipelines", "semaphore-projects"):
        assert kind in outcome.stderr


def test_result_absent_exits_1(run: Run, results: redis.Redis, worker_env: dict[str, str]) -> None:
    """No stored value: exit 1 naming the key and the Redis it read, with its variable."""
    outcome = run("result", "pokemon", "missingno")
    assert outcome.exit_code == 1
    where = f"in Redis at {worker_env['REDIS_URL']} (REDIS_URL)"
    assert f"no result at pokemon:missingno {where}" in outcome.stderr


def test_follow_from_start_prints_a_jobs_event(
    run: Run, producer: Celery, results: redis.Redis
) -> None:
    """`follow --from-start --count 1` prints the event a job wrote, as JSON."""
    job = producer.send_task(FETCH, args=["charizard"])
    job.get(timeout=TIMEOUT)
    outcome = run("follow", "--from-start", "--count", "1")
    assert outcome.exit_code == 0
    [line] = outcome.stdout.splitlines()
    event = json.loads(line)
    # The first entry: a loaded machine may have re-run the job and written another.
    entry_id, _ = entries(results, "events:results")[0]
    assert event["entry_id"] == entry_id
    assert event["key"] == "pokemon:charizard"
    assert event["task_id"] == job.id


def test_follow_prints_only_new_events(
    worker_env: dict[str, str], producer: Celery, results: redis.Redis
) -> None:
    """By default only events written after `follow` starts are printed."""
    producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "follow", "--count", "1", "--block", "200"],
        cwd=REPO_ROOT,
        env={**os.environ, **worker_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: any(client["cmd"] == "xread" for client in results.client_list()),
            timeout=15,
            what="follow reading the stream",
        )
        producer.send_task(FETCH, args=["mew"]).get(timeout=TIMEOUT)
        out, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    [line] = out.splitlines()
    assert json.loads(line)["key"] == "pokemon:mew"


def test_follow_with_a_group_acknowledges_what_it_printed(
    run: Run, producer: Celery, results: redis.Redis
) -> None:
    """--group creates the group and XACKs each printed event, and claims no event past
    --count: the second job's event is left for the group, not pending on c1."""
    producer.send_task(FETCH, args=["charizard"]).get(timeout=TIMEOUT)
    producer.send_task(FETCH, args=["pikachu"]).get(timeout=TIMEOUT)
    outcome = run("follow", "--group", "ops", "--consumer", "c1", "--from-start", "--count", "1")
    assert outcome.exit_code == 0
    # The stream's first entry, charizard's unless a loaded machine re-ran an earlier
    # test's job after this test emptied Redis, and its event came first.
    printed = json.loads(outcome.stdout)
    events = entries(results, "events:results")
    first_id, first = events[0]
    assert (printed["entry_id"], printed["key"]) == (first_id, first["key"])
    assert len(events) >= 2
    [group] = results.xinfo_groups("events:results")
    assert group["name"] == "ops"
    assert group["pending"] == 0
    assert run("follow", "--consumer", "c1").exit_code == 2


def test_failures_list_shows_a_bad_input_failure(run: Run, results: redis.Redis) -> None:
    """An invalid name leaves a record that `failures list` shows, as text and JSON."""
    assert run("enqueue", FETCH, "pika chu", "--wait").exit_code == 1
    [(entry_id, _)] = wait_for_failures(results)
    text = run("failures", "list")
    assert text.exit_code == 0
    [line] = text.stdout.splitlines()
    assert line.startswith(entry_id)
    assert FETCH in line
    assert '["pika chu"]' in line
    assert "InvalidInput:" in line
    assert "attempts=1" in line
    [record] = [json.loads(row) for row in run("failures", "list", "--json").stdout.splitlines()]
    assert record["entry_id"] == entry_id
    assert record["error"] == "InvalidInput"
    # JSON types, not the stream's strings.
    assert record["args"] == ["pika chu"]
    assert record["kwargs"] == {}
    assert record["attempts"] == 1
    assert record["status"] is None
    assert record["truncated"] is False


def test_failures_replay_resends_and_removes_the_entry(run: Run, results: redis.Redis) -> None:
    """Replay sends the job again (a new failure), and the old entry is gone."""
    assert run("enqueue", FETCH, "missingno", "--wait").exit_code == 1
    [(old_id, _)] = wait_for_failures(results)
    dry = run("failures", "replay", old_id, "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.startswith(f"{old_id} would send {FETCH}")
    assert len(entries(results, "events:failures")) == 1

    replayed = run("failures", "replay", old_id)
    assert replayed.exit_code == 0, replayed.output
    entry, arrow, new_job, *_ = replayed.stdout.split()
    assert (entry, arrow) == (old_id, "->")
    assert results.xrange("events:failures", old_id, old_id) == []
    [(_, record)] = wait_for_failures(results)
    assert record["task_id"] == new_job
    assert json.loads(record["args"]) == ["missingno"]

    again = run("failures", "replay", old_id)
    assert again.exit_code == 1
    assert f"no such failure entry: {old_id}" in again.stderr


def queue_table(output: str) -> dict[str, list[str]]:
    """`apiworker queues` as {queue: [ready, unacked, dead]}, after its header line and
    before the blank line that begins a RabbitMQ cluster's section."""
    header, rule, *rows = output.split("\n\n", 1)[0].splitlines()
    assert header.split() == ["queue", "ready", "in_hand", "dead"]
    assert set(rule.strip()) == {"─"}  # rich's rule under the header
    return {row.split()[0]: row.split()[1:] for row in rows}


@pytest.mark.broker("redis")
def test_queues_counts_waiting_jobs(run: Run, redis_server_url: str, results: redis.Redis) -> None:
    """Ready, in-hand and parked jobs per queue on the Redis broker. Jobs on a broker
    nobody consumes are counted where they were routed."""
    idle = with_db(redis_server_url, 3)
    redis.Redis.from_url(idle).flushdb()
    try:
        assert run("enqueue", FETCH, "pikachu", CELERY_BROKER_URL=idle).exit_code == 0
        assert run("enqueue", FETCH, "mew", "--queue", "cms", CELERY_BROKER_URL=idle).exit_code == 0
        outcome = run("queues", CELERY_BROKER_URL=idle)
    finally:
        redis.Redis.from_url(idle).flushdb()
    assert outcome.exit_code == 0, outcome.output
    assert queue_table(outcome.stdout) == {
        "pokeapi": ["1", "0", "0"],
        "cms": ["1", "0", "0"],
        "semaphore": ["0", "0", "0"],
        "celery": ["0", "0", "0"],
    }


@pytest.mark.broker("amqp")
def test_queues_on_rabbitmq_counts_ready_and_dead_and_asks_management_for_unacked(
    run: Run, new_broker: Callable[[int], str], rabbit_server: RabbitServer, results: redis.Redis
) -> None:
    """On a vhost nobody consumes: ready counts over AMQP at once, the dead-letter column
    filled, and the unacknowledged column only with the management API (the test node's)."""
    idle = new_broker(3)
    assert run("enqueue", FETCH, "pikachu", CELERY_BROKER_URL=idle).exit_code == 0
    assert run("enqueue", FETCH, "mew", "--queue", "cms", CELERY_BROKER_URL=idle).exit_code == 0
    plain = run("queues", CELERY_BROKER_URL=idle, RABBITMQ_MANAGEMENT_URL=None)
    assert plain.exit_code == 0, plain.output
    assert queue_table(plain.stdout) == {
        "pokeapi": ["1", "-", "0"],
        "cms": ["1", "-", "0"],
        "semaphore": ["0", "-", "0"],
        "celery": ["0", "-", "0"],
    }
    managed = run(
        "queues", CELERY_BROKER_URL=idle, RABBITMQ_MANAGEMENT_URL=rabbit_server.management_url
    )
    assert managed.exit_code == 0, managed.output
    assert [row[1] for row in queue_table(managed.stdout).values()] == ["0"] * 4
    # The node, and each queue's leader, members and policy (a one-node "cluster").
    node = rabbit_server.node.name if rabbit_server.node else ""
    assert f"nodes: 1 nodes, 0 down: {node}" in managed.stdout, managed.stdout
    # The API shows a new queue's policy at its next statistics sample.
    wait_for(
        lambda: f"cms: leader {node}; members {node}; policy apiworker-cms"
        in run("queues", CELERY_BROKER_URL=idle,
               RABBITMQ_MANAGEMENT_URL=rabbit_server.management_url).stdout,
        timeout=10, what="the cms queue's leader, members and policy",
    )  # fmt: skip


def test_health_ok_with_the_worker_up(run: Run, results: redis.Redis, sandbox: Any) -> None:
    """Every check passes; the Semaphore token is never printed."""
    outcome = run("health", "--timeout", "1")
    assert outcome.exit_code == 0, outcome.output
    statuses = {line.split()[1]: line.split()[0] for line in outcome.stdout.splitlines()}
    assert statuses == {
        name: "ok"
        for name in ("broker", "results", "workers", "pokeapi", "cms", "semaphore", "budget")
    }
    assert sandbox.semaphore_token not in outcome.output


def test_health_fails_when_an_upstream_is_unreachable(run: Run, results: redis.Redis) -> None:
    """A closed upstream port fails health (exit 1); a missing token is only skipped."""
    closed = f"http://127.0.0.1:{free_port()}/api/v2"
    outcome = run("health", "--timeout", "1", POKEAPI_BASE_URL=closed, SEMAPHORE_API_TOKEN=None)
    assert outcome.exit_code == 1
    lines = {line.split()[1]: line for line in outcome.stdout.splitlines()}
    assert lines["pokeapi"].startswith("FAIL")
    # The address that did not answer, and the call, each line whole (rich lays the
    # checks out but reads no markup into them).
    port = closed.split(":")[2].split("/")[0]
    assert f"connection to 127.0.0.1:{port} failed" in lines["pokeapi"]
    assert "[pokeapi GET /api/v2/pokemon]" in lines["pokeapi"]
    assert lines["semaphore"].split()[0] == "skip"
    assert "not configured (set SEMAPHORE_API_TOKEN)" in lines["semaphore"]
    assert all(lines[name].startswith("ok") for name in ("broker", "results", "workers", "cms"))
