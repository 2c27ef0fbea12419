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


#: The most entries one read asks for.
READ_BATCH = 100


def read_stream(
    client: redis.Redis, stream: str, after: str, block: int, batch: int = READ_BATCH
) -> Iterator[Entry]:
    while True:
        for entry in entries_of(client.xread({stream: after}, count=batch, block=block)):
            after = entry[0]
            yield entry


def read_group(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    from_start: bool,
    block: int,
    batch: int = READ_BATCH,
) -> Iterator[Entry]:
    """This consumer's unacknowledged entries first (a crash left them), then new ones;
    at most `batch` a read, so a reader that stops after N events claims no more."""
    ensure_group(client, stream, group, from_start=from_start)
    pending = "0"
    while found := entries_of(client.xreadgroup(group, consumer, {stream: pending}, count=batch)):
        yield from found
        pending = found[-1][0]
    while True:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=batch, block=block)
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
    batch: int = READ_BATCH,
) -> Iterator[tuple[str, Entry]]:
    """Every partition stream in turn (results/keys.py), as a reader of a Redis Cluster
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
                reply = client.xreadgroup(group, consumer, {stream: after[stream]}, count=batch)
                found_here = entries_of(reply)
                if not found_here and after[stream] != ">":
                    after[stream] = ">"
                    reply = client.xreadgroup(group, consumer, {stream: ">"}, count=batch)
                    found_here = entries_of(reply)
                elif found_here and after[stream] != ">":
                    after[stream] = found_here[-1][0]
            else:
                found_here = entries_of(client.xread({stream: after[stream]}, count=batch))
                if found_here:
                    after[stream] = found_here[-1][0]
            for entry in found_here:
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
    # A group's reader claims only what it will print: entries read past --count would
    # stay pending on this consumer until its next run.
    batch = min(READ_BATCH, count) if count is not None else READ_BATCH
    entries: Iterator[tuple[str, Entry]]
    if len(streams) > 1:
        entries = read_partitions(
            client,
            streams,
            group=group,
            consumer=name,
            from_start=from_start,
            block=block,
            batch=batch,
        )
    elif group:
        one = read_group(
            client, streams[0], group, name, from_start=from_start, block=block, batch=batch
        )
        entries = ((streams[0], entry) for entry in one)
    else:
        after = "0-0" if from_start else newest_id(client, streams[0])
        one = read_stream(client, streams[0], after, block, batch)
        entries = ((streams[0], entry) for entry in one)
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
