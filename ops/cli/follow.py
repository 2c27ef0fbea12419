"""`apiworker follow`: the result event stream, tailed or read as a consumer group."""

from __future__ import annotations

import socket
import time
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
    ensure_group(client, stream, group, from_start=from_start)
    pending = "0"
    while batch := entries_of(client.xreadgroup(group, consumer, {stream: pending}, count=100)):
        yield from batch
        pending = batch[-1][0]
    while True:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=100, block=block)
        yield from entries_of(reply)


def ensure_group(client: redis.Redis, stream: str, group: str, *, from_start: bool) -> None:
    try:
        client.xgroup_create(stream, group, id="0" if from_start else "$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_partitions(
    client: redis.Redis,
    streams: list[str],
    *,
    group: str | None,
    consumer: str,
    from_start: bool,
    block: int,
) -> Iterator[tuple[str, Entry]]:
    """Every partition stream in turn (tasks/keys.py), as a reader of a Redis Cluster
    must: one XREAD or XREADGROUP per stream, since a command's keys share one slot.

    Each stream is read without blocking; a round that finds nothing waits a tenth of a
    second, or `block` ms when that is shorter, before the next.
    """
    after = {stream: "0-0" if from_start else newest_id(client, stream) for stream in streams}
    if group:
        for stream in streams:
            ensure_group(client, stream, group, from_start=from_start)
        after = dict.fromkeys(streams, "0")  # this consumer's pending entries first
    while True:
        found = False
        for stream in streams:
            if group:
                reply = client.xreadgroup(group, consumer, {stream: after[stream]}, count=100)
                batch = entries_of(reply)
                if not batch and after[stream] != ">":
                    after[stream] = ">"
                    batch = entries_of(client.xreadgroup(group, consumer, {stream: ">"}, count=100))
                elif batch and after[stream] != ">":
                    after[stream] = batch[-1][0]
            else:
                batch = entries_of(client.xread({stream: after[stream]}, count=100))
                if batch:
                    after[stream] = batch[-1][0]
            for entry in batch:
                found = True
                yield stream, entry
        if not found:
            time.sleep(min(0.1, block / 1000))


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

    Each line is the event's fields plus `entry_id` (and, with EVENTS_PARTITIONS above
    1, the `stream` it came from: each partition is read in turn). With --group, events
    are shared between the consumers of the group (one group of that name on each
    partition) and acknowledged once printed.
    """
    if consumer and not group:
        raise click.UsageError("--consumer needs --group")
    client = services.results()
    streams = services.keys.all_events
    name = consumer or socket.gethostname()
    entries: Iterator[tuple[str, Entry]]
    if len(streams) > 1:
        entries = read_partitions(
            client, streams, group=group, consumer=name, from_start=from_start, block=block
        )
    elif group:
        one = read_group(client, streams[0], group, name, from_start=from_start, block=block)
        entries = ((streams[0], entry) for entry in one)
    else:
        after = "0-0" if from_start else newest_id(client, streams[0])
        entries = ((streams[0], entry) for entry in read_stream(client, streams[0], after, block))
    printed = 0
    try:
        for stream, (entry_id, fields) in entries:
            if fields:  # a group's pending entry that was since deleted has none
                where = {"stream": stream} if len(streams) > 1 else {}
                click.echo(json_line({"entry_id": entry_id, **where, **fields}))
                printed += 1
            if group:
                client.xack(stream, group, entry_id)
            if count is not None and printed >= count:
                return
    except KeyboardInterrupt:
        return
