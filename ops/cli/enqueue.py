"""`apiworker enqueue`: send a job by its public task name, checked before it is sent."""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click
from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout
from redis.backoff import NoBackoff
from redis.retry import Retry

from brokers import (
    ALL_QUEUES,
    redis_result_backend,
)
from ops.cli import progress
from ops.cli.base import (
    PUBLIC_TASKS,
    Services,
    cli,
    fail,
    json_line,
)
from telemetry import trace_context
from telemetry.redact import redact


def parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--kwargs") from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    return value


def check_call(task: str, args: Sequence[object], kwargs: Mapping[str, object]) -> None:
    """Refuse a job the worker could never run, before it reaches a queue."""
    params = PUBLIC_TASKS.get(task)
    if params is None:
        close = difflib.get_close_matches(task, PUBLIC_TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        valid = "\n  ".join(PUBLIC_TASKS)
        raise click.UsageError(f"unknown task {task!r}{hint}; valid tasks:\n  {valid}")
    given = [*params[: len(args)], *kwargs]
    problems = []
    if len(args) > len(params):
        problems.append(f"takes {len(params)} positional argument(s), got {len(args)}")
    if unknown := sorted(set(kwargs) - set(params)):
        problems.append(f"unknown keyword argument(s): {', '.join(unknown)}")
    if twice := sorted(name for name in set(given) if given.count(name) > 1):
        problems.append(f"argument(s) given twice: {', '.join(twice)}")
    if missing := [name for name in params if name not in given]:
        problems.append(f"missing argument(s): {', '.join(missing)}")
    if problems:
        signature = f"{task}({', '.join(params)})"
        raise click.UsageError(f"{signature}: {'; '.join(problems)}")


def queue_of(app: Celery, task: str, queue: str | None) -> str:
    """The queue a job of `task` goes to: `--queue`, else the worker's route for it."""
    if queue:
        return queue
    route = app.amqp.router.route({}, task, (), {})
    return str(route["queue"].name)


def consumers_hint(app: Celery, queue: str, timeout: float = 1.0) -> str:
    """Who consumes `queue` (Celery's `inspect active_queues`), and where to look next: a
    job that never starts is most often a queue no worker reads."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    workers = sorted(
        name for name, queues in replies.items() if any(q["name"] == queue for q in queues)
    )
    if not workers:
        return f"no worker consumes queue {queue}; apiworker health checks the broker and workers"
    return (
        f"{len(workers)} worker(s) consume queue {queue} ({', '.join(workers)}), busy or "
        "behind a backlog (apiworker queues); apiworker health checks them"
    )


def print_outcome(job: Any, timeout: float, app: Celery, queue: str) -> None:
    """Print each retry and deferral as it happens, then the finished job's result; for
    a job that sent others, follow them to their end. Exit 1 on a failure or timeout,
    a timeout saying whether any worker consumes the job's queue."""
    deadline = time.monotonic() + timeout

    def on_message(meta: Mapping[str, Any]) -> None:
        line = progress.retry_line(meta)
        if line is not None:
            click.echo(line, err=True)

    try:
        value = job.get(timeout=timeout, propagate=False, on_message=on_message)
    except ResultTimeout:
        fail(
            f"timed out after {timeout:g}s waiting for job {job.id} (state {job.state}): "
            + consumers_hint(app, queue)
        )
    if job.state != "SUCCESS":
        error = job.result
        fail(f"job {job.id} {job.state}: {type(error).__name__}: {redact(str(error))}")
    click.echo(json_line(value))
    children = [child.id for child in job.children or []]
    if not children:
        return
    remaining = deadline - time.monotonic()
    done, failed = progress.follow_children(app.backend, children, remaining)
    click.echo(f"child jobs: {done} done, {failed} failed, {len(children)} in all", err=True)
    if done + failed < len(children):
        fail(f"timed out after {timeout:g}s with {len(children) - done - failed} child jobs open")
    if failed:
        fail(f"{failed} of {len(children)} child jobs failed (apiworker failures list)")


@cli.command()
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as an object.")
@click.option(
    "--queue", type=click.Choice(ALL_QUEUES), help="Send to this queue instead of the routed one."
)
@click.option("--wait", is_flag=True, help="Wait for the job and print its result as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@click.option(
    "--traceparent",
    envvar="TRACEPARENT",
    callback=trace_context.traceparent,
    help="W3C traceparent: the job's spans join this trace.",
)
@click.option(
    "--tracestate", envvar="TRACESTATE", callback=trace_context.tracestate, help="W3C tracestate."
)
@click.pass_obj
def enqueue(
    services: Services,
    task: str,
    args: tuple[str, ...],
    kwargs_json: str | None,
    queue: str | None,
    wait: bool,
    timeout: float,
    traceparent: str | None,
    tracestate: str | None,
) -> None:
    """Send TASK by its public name with ARGs (as strings) and print the job id.

    With --wait, also print the result; exit 1 if the job fails or is not done in time.
    With --traceparent (or TRACEPARENT), the job is part of that trace.
    """
    kwargs = parse_kwargs(kwargs_json)
    # The settings first: the task registry check_call reads needs valid ones, and a
    # bad one is reported as such (exit 2), not as a failure to load the tasks.
    _ = services.settings
    check_call(task, args, kwargs)
    reachable_or_fail(services)
    # The routing key too: the task's route would otherwise still name its usual queue.
    options: dict[str, Any] = {"queue": queue, "routing_key": queue} if queue else {}
    if traceparent:
        options["headers"] = trace_context.headers(traceparent, tracestate)
    # Without --wait nobody reads the job's result-backend copy: the worker skips
    # storing a success (its value is in the results keys) and this client subscribes to
    # no result channel. A failure is still stored (tasks/base.py).
    job = services.celery().send_task(
        task, args=list(args), kwargs=kwargs, ignore_result=not wait, **options
    )
    click.echo(job.id)
    if wait:
        print_outcome(job, timeout, services.celery(), queue_of(services.celery(), task, queue))


def reachable_or_fail(services: Services, timeout: float = 5.0) -> None:
    """The broker and the result store answer, or the group's one line naming the one that
    does not (exit 1): Celery would otherwise retry its result store for about 20 s and
    end in a traceback."""
    services.broker().ping(timeout)
    backend = services.settings.result_backend
    if redis_result_backend(backend):
        no_retry = Retry(NoBackoff(), 0)
        client = services.redis(
            backend, source=services.backend_source, socket_timeout=timeout, retry=no_retry
        )
        client.ping()
