"""`apiworker failures`: list the failure stream and replay its jobs by task name."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import click
import redis

from ops.cli.base import (
    PUBLIC_TASKS,
    Entry,
    Record,
    Services,
    cli,
    fail,
    json_line,
)


@cli.group()
def failures() -> None:
    """Inspect and replay jobs that failed permanently (the failure stream)."""


def failure_line(entry_id: str, record: Record) -> str:
    kwargs = record.get("kwargs", "{}")
    call = record.get("args", "[]") + ("" if kwargs == "{}" else f" {kwargs}")
    return "  ".join(
        (
            entry_id,
            record.get("failed_at", "?"),
            record.get("task", "?"),
            call,
            f"{record.get('error', '?')}: {record.get('message', '')}",
            f"attempts={record.get('attempts', '?')}",
        )
    )


def typed_record(entry_id: str, record: Record) -> dict[str, Any]:
    """A failure record as JSON types, for `list --json`: the stream holds only strings,
    so `args` and `kwargs` (JSON texts there) become the list and object they encode,
    `attempts` and `status` numbers (`status` null when no answer came), `truncated` a
    boolean. A field that does not parse stays the string it was."""
    typed: dict[str, Any] = {"entry_id": entry_id, **record}
    for name in ("args", "kwargs"):
        if name in record:
            with contextlib.suppress(json.JSONDecodeError):  # kept as the string it is
                typed[name] = json.loads(record[name])
    for name in ("attempts", "status"):
        if record.get(name, "").isdigit():
            typed[name] = int(record[name])
    if record.get("status") == "":
        typed["status"] = None
    if record.get("truncated") in ("0", "1"):
        typed["truncated"] = record["truncated"] == "1"
    return typed


@failures.command("list")
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: args and kwargs as JSON, attempts and status numbers.",
)
@click.pass_obj
def list_failures(services: Services, count: int, as_json: bool) -> None:
    """Show recorded failures, newest first: id, time, task, arguments, error, attempts."""
    entries = cast(list[Entry], services.results().xrevrange(services.keys.failures, count=count))
    if not entries and not as_json:
        click.echo("no failures recorded", err=True)
    for entry_id, record in entries:
        if as_json:
            click.echo(json_line(typed_record(entry_id, record)))
        else:
            click.echo(failure_line(entry_id, record))


@dataclass(frozen=True)
class Replay:
    entry_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]


def replay_of(entry_id: str, record: Record) -> Replay:
    """The job a failure record describes, or exit 1 if it cannot be sent again."""
    task = record.get("task", "")
    try:
        args = json.loads(record.get("args", "[]"))
        kwargs = json.loads(record.get("kwargs", "{}"))
    except json.JSONDecodeError as exc:
        fail(f"failure {entry_id}: unreadable arguments: {exc}")
    if task not in PUBLIC_TASKS or not isinstance(args, list) or not isinstance(kwargs, dict):
        fail(f"failure {entry_id}: cannot replay task {task!r} with {args!r} {kwargs!r}")
    return Replay(entry_id, task, args, kwargs)


def find_failures(client: redis.Redis, stream: str, entry_ids: Sequence[str]) -> list[Entry]:
    """The named entries, or exit 1 naming every id that is not in the stream."""
    found: list[Entry] = []
    unknown: list[str] = []
    for entry_id in dict.fromkeys(entry_ids):
        try:
            entries = cast(list[Entry], client.xrange(stream, entry_id, entry_id))
        except redis.ResponseError:  # not a stream id at all
            entries = []
        if entries:
            found.extend(entries)
        else:
            unknown.append(entry_id)
    if unknown:
        fail(f"no such failure entry: {', '.join(unknown)}")
    return found


@failures.command("replay")
@click.argument("entry_ids", nargs=-1, metavar="[ENTRY_ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every recorded failure.")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; change nothing.")
@click.pass_obj
def replay(services: Services, entry_ids: tuple[str, ...], replay_all: bool, dry_run: bool) -> None:
    """Send failed jobs again under their task names and arguments; print the new job ids.

    A replayed entry is removed from the failure stream so that it is not replayed
    twice; if the job fails again it records a new failure. Exit 1 on an unknown id,
    before anything is sent.
    """
    if bool(entry_ids) == replay_all:
        raise click.UsageError("give ENTRY_IDs or --all (not both)")
    client = services.results()
    stream = services.keys.failures
    if replay_all:
        entries = cast(list[Entry], client.xrange(stream))
    else:
        entries = find_failures(client, stream, entry_ids)
    jobs = [replay_of(entry_id, record) for entry_id, record in entries]
    if not jobs:
        click.echo("no failures to replay", err=True)
    for job in jobs:
        call = f"{job.task} {json_line(job.args)} {json_line(job.kwargs)}"
        if dry_run:
            click.echo(f"{job.entry_id} would send {call}")
            continue
        sent = services.celery().send_task(job.task, args=job.args, kwargs=job.kwargs)
        client.xdel(stream, job.entry_id)
        click.echo(f"{job.entry_id} -> {sent.id} {call}")
