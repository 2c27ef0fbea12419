"""`make demo`: the whole flow, offline, in well under a minute.

A producer that knows only task names and Redis URLs sends three jobs; a real worker
fetches them from the sandbox upstream through the API layer and writes the results
contract to Redis. Everything runs on loopback and is private to this process: its own
redis-server in a temporary folder (never a Redis someone else uses), its own worker,
and the sandbox in-process. All of it is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from celery import Celery

# Loaded so that Celery rebuilds a job's failure as the API layer's own exception, which
# prints as its message (`not found [<upstream> GET … -> 404]`): Celery only rebuilds
# classes of modules already imported, and shows any other as the tuple of its arguments.
from apis import errors as _upstream_errors  # noqa: F401
from ops.processes.children import Child, spawn, stop_children, tail
from ops.processes.redis_server import find_redis_server, start_private_redis
from ops.processes.waits import StartupFailed, wait_until
from ops.producer import producer_app
from results.keys import Keys
from sandbox.server import SandboxServer
from upstreams import Upstream, all_upstreams

#: The demo's jobs (a data file beside this module): the task, and the idents it sends.
SCRIPT = tomllib.loads((Path(__file__).parent / "demo.toml").read_text())
FETCH: str = SCRIPT["task"]
FOUND: tuple[str, ...] = tuple(SCRIPT["found"])
MISSING: str = SCRIPT["missing"]
WORKER_START_TIMEOUT = 30.0
RESULTS_TIMEOUT = 30.0
KEYS = Keys()


class Interrupted(Exception):
    """SIGTERM, turned into an exception so the same cleanup runs as for Ctrl-C."""


@dataclass
class Outcome:
    """What the demo expected and did not see; empty means success."""

    missing: list[str] = field(default_factory=list)

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.missing.append(what)
            say(f"   MISSING: {what}")


def say(text: str) -> None:
    print(text, flush=True)


def worker_environment(redis_url: str, sandbox: SandboxServer) -> dict[str, str]:
    """Every setting that decides where data goes is set here, so nothing inherited from
    the caller's shell (CELERY_BROKER_URL, RESULT_KEY_PREFIX...) can send it elsewhere."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        RESULT_KEY_PREFIX="",
        WORKER_POOL="threads",
        WORKER_CONCURRENCY="4",
        METRICS_PORT="0",  # a demo needs no metrics, nor a port that may be in use
        HTTP_CONNECT_TIMEOUT="2",
        HTTP_READ_TIMEOUT="5",
        PYTHONUNBUFFERED="1",
    )
    env.update(sandbox.upstream_settings())
    return env


def start_worker(env: dict[str, str], log: Path) -> tuple[Child, str]:
    node = f"demo-{os.getpid()}@{socket.gethostname()}"
    args = [
        sys.executable, "-m", "worker", "--loglevel=INFO",
        f"--hostname={node}", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    return spawn("worker", args, output=log, env=env), node


def wait_for_worker(producer: Celery, worker: Child, node: str, log: Path) -> None:
    def answers() -> bool:
        if worker.exit_code() is not None:
            raise StartupFailed(f"the worker exited early:\n{tail(log)}")
        return bool(producer.control.ping(destination=[node], timeout=0.5))

    wait_until(answers, timeout=WORKER_START_TIMEOUT, what=f"worker {node} to answer ping")


def wait_for_results(jobs: dict[str, Any], outcome: Outcome) -> None:
    """Each job's final state, within one shared deadline."""
    deadline = time.monotonic() + RESULTS_TIMEOUT
    for name, job in jobs.items():
        remaining = max(0.1, deadline - time.monotonic())
        try:
            value = job.get(timeout=remaining, propagate=False)
        except Exception as error:  # celery's TimeoutError, or the backend went away
            say(f"   {name}: no result ({type(error).__name__}: {error})")
            value = None
        state = job.state
        detail = f"{type(value).__name__}: {value}" if state == "FAILURE" else json.dumps(value)
        say(f"   {name}: {state} {detail}")
        expected = "FAILURE" if name == MISSING else "SUCCESS"
        outcome.expect(state == expected, f"{FETCH}({name!r}) should end in {expected}")


Entry = tuple[str, dict[str, str]]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read_stream(client: redis.Redis, key: str) -> list[Entry]:
    """A whole stream as text, whatever the client's decoding settings."""
    return [
        (_text(entry_id), {_text(name): _text(value) for name, value in (fields or {}).items()})
        for entry_id, fields in client.xrange(key) or []
    ]


def task_upstream(task: str) -> Upstream:
    """The registry entry whose task module holds `task`."""
    module = task.rpartition(".")[0]
    return next(upstream for upstream in all_upstreams() if upstream.tasks == module)


def result_key(ident: str) -> str:
    """Where the demo's task stores `ident`: the first kind its upstream stores."""
    return KEYS.result(task_upstream(FETCH).result_kinds[0], ident)


def show_results(client: redis.Redis, outcome: Outcome) -> None:
    for name in FOUND:
        key = result_key(name)
        raw = client.get(key)
        text = None if raw is None else _text(raw)
        say(f"   {key} = {text}")
        stored = json.loads(text) if text is not None else None
        outcome.expect(
            isinstance(stored, dict) and name in stored.values(),
            f"the JSON of {name} at {key}",
        )


def show_events(client: redis.Redis, outcome: Outcome) -> None:
    (stream,) = KEYS.all_events  # the demo's Redis keeps one partition
    entries = read_stream(client, stream)
    say(f"   {stream} ({len(entries)} events):")
    for entry_id, fields in entries:
        say(f"     {entry_id} {_fields(fields)}")
    keys = {fields.get("key") for _, fields in entries}
    for name in FOUND:
        key = result_key(name)
        outcome.expect(key in keys, f"an event for {key} in {stream}")


def show_failures(client: redis.Redis, outcome: Outcome) -> None:
    """The failure record is written right after the job's state, so allow it a moment."""

    def recorded() -> bool:
        return any(_is_missing_record(fields) for _, fields in read_stream(client, KEYS.failures))

    with contextlib.suppress(StartupFailed):  # reported below as a missing outcome
        wait_until(recorded, timeout=5.0, what="the failure record")
    entries = read_stream(client, KEYS.failures)
    say(f"   {KEYS.failures} ({len(entries)} failures):")
    for entry_id, fields in entries:
        say(f"     {entry_id} {_fields(fields)}")
    outcome.expect(recorded(), f"a failure record for {MISSING!r} in {KEYS.failures}")


def _is_missing_record(fields: dict[str, str]) -> bool:
    return fields.get("task") == FETCH and MISSING in fields.get("args", "")


def _fields(fields: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in fields.items())


def run_demo(stack: ExitStack, redis_binary: str) -> int:
    """The steps; every resource is registered on `stack` as soon as it exists."""
    served = ", ".join(
        upstream.description for upstream in all_upstreams() if upstream.sandbox_path
    )
    say(f"1. Starting the sandbox upstream (a fake of {served}, in-process)")
    sandbox = stack.enter_context(SandboxServer())
    say(f"   listening on {sandbox.base_url}")

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apiworker-demo-")))
    say("2. Starting a private redis-server (no other Redis is touched)")
    server = start_private_redis(
        redis_binary, workdir / "redis", workdir / "redis.log", appendonly=False
    )
    stack.callback(server.stop)
    say(f"   {server.url} answers PING")

    log = workdir / "worker.log"
    say("3. Starting one Celery worker pointed at both")
    worker, node = start_worker(worker_environment(server.url, sandbox), log)
    stack.callback(stop_children, [worker])
    producer = producer_app(server.url, server.url, name="demo-producer")
    stack.callback(producer.close)
    wait_for_worker(producer, worker, node, log)
    say(f"   {node} answers ping")

    names = [*FOUND, MISSING]
    say(f"4. Sending {FETCH} by name for {', '.join(names)} from a bare Celery client")
    jobs = {name: producer.send_task(FETCH, args=[name]) for name in names}

    outcome = Outcome()
    say(f"5. Waiting for the results (at most {RESULTS_TIMEOUT:g}s)")
    wait_for_results(jobs, outcome)

    client = stack.enter_context(redis.Redis.from_url(server.url, decode_responses=True))
    say("6. What the worker stored in Redis")
    show_results(client, outcome)
    show_events(client, outcome)
    show_failures(client, outcome)

    say("7. Stopping the worker, redis-server and the sandbox")
    if outcome.missing:
        say(f"worker log (last lines):\n{tail(log, 40)}")
        return 1
    return 0


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m ops.demo",
        description="Run the whole flow offline with a private Redis, worker and sandbox.",
    ).parse_args(argv)
    binary = find_redis_server()
    if binary is None:
        say(
            "The demo needs redis-server on PATH: it always starts a private one, so it "
            "never writes into a Redis someone else uses.\n"
            "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: "
            "brew install redis) and run `make demo` again."
        )
        return 1
    signal.signal(signal.SIGTERM, _raise_interrupted)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            code = run_demo(stack, binary)
    except (KeyboardInterrupt, Interrupted):
        say("interrupted: everything the demo started has been stopped")
        return 130
    except StartupFailed as error:
        say(f"demo failed: {error}")
        return 1
    elapsed = time.monotonic() - started
    if code == 0:
        say(f"Demo finished in {elapsed:.1f}s: every expected outcome happened.")
    else:
        say(f"Demo finished in {elapsed:.1f}s: some expected outcomes did not happen.")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
