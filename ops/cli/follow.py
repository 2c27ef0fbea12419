"""`apiworker follow`: the result event stream, tailed or read as a consumer group."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, cast

import click
import redis

from ops.cli.base import (
    Entry,
    Services,
    cli,
    json_line,
)


def entries_of(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 or RESP3 shape)."""
    if not reply:
        return []
    batches = reply.values() if isinstance(reply, dict) else [batch[1] for batch in reply]
    return [(entry_id, fields or {}) for batch in batches for entry_id, fields in batch]


def newest_id(client: redis.Redis, stream: str) -> str:
    """The id to read after for "new events only"; unlike `$` it survives between reads."""
    top = cast(list[Entry], client.xrevrange(stream, count=1))
    return top[0][0] if top else "0-0"


def read_stream(client: redis.Redis, stream: str, after: str, block: int) -> Iterator[Entry]:
    while True:
        for entry in entries_of(client.xread({stream: after}, count=100, block=block)):
            after = entry[0]
            yield entry


def read_group(
    client: redis.Redis, stream: str, group: str, consumer: str, *, from_start: bool, block: int
) -> Iterator[Entry]:
    """This consumer's unacknowledged entries first (a crash left them), then new ones."""
    try:
        client.xgroup_create(stream, group, id="0" if from_start else "$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    pending = "0"
    while batch := entries_of(client.xreadgroup(group, consumer, {stream: pending}, count=100)):
        yield from batch
        pending = batch[-1][0]
    while True:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=100, block=block)
        yield from entries_of(reply)


@cli.command()
@click.option(
    "--from-start",
    is_flag=True,
    help="Begin at the oldest event, not new ones (with --group: when creating it).",
)
@click.option(
    "--count", type=click.IntRange(min=1), help="Stop after N events (default: until Ctrl-C)."
)
@click.option("--group", help="Read as consumer group G (created if missing); ack each event.")
@click.option("--consumer", help="Consumer name in --group.  [default: this host's name]")
@click.option(
    "--block",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    metavar="MS",
    help="How long one read waits for new events.",
)
@click.pass_obj
def follow(
    services: Services,
    from_start: bool,
    count: int | None,
    group: str | None,
    consumer: str | None,
    block: int,
) -> None:
    """Print events of the results stream as JSON lines, as results are written.

    Each line is the event's fields plus `entry_id`. With --group, events are shared
    between the consumers of the group and acknowledged once printed.
    """
    if consumer and not group:
        raise click.UsageError("--consumer needs --group")
    client = services.results()
    stream = services.keys.events
    if group:
        name = consumer or socket.gethostname()
        entries = read_group(client, stream, group, name, from_start=from_start, block=block)
    else:
        after = "0-0" if from_start else newest_id(client, stream)
        entries = read_stream(client, stream, after, block)
    printed = 0
    try:
        for entry_id, fields in entries:
            if fields:  # a group's pending entry that was since deleted has none
                click.echo(json_line({"entry_id": entry_id, **fields}))
                printed += 1
            if group:
                client.xack(stream, group, entry_id)
            if count is not None and printed >= count:
                return
    except KeyboardInterrupt:
        return
