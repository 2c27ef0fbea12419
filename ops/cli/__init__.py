"""`apiworker`: the operator's view of the worker from a shell.

It sends jobs by their public names, reads the results contract and the failure stream,
and checks what the worker depends on. Settings come from the worker's own environment
variables, read afresh on every invocation rather than from the process-wide caches,
so a command always talks to the Redis it was pointed at.

One module per command group: `enqueue`, `result`, `follow`, `failures`, `queues`,
`top`, `dead_letters`, `health`, `migrate-keys`, `send-owed-events` (`owed_events`),
`rabbitmq`; the group itself and what
they share is `base`.
"""

from __future__ import annotations

import logging

from ops.cli import (
    dead_letters,
    enqueue,
    failures,
    follow,
    health,
    migrate_keys,
    owed_events,
    queues,
    rabbitmq,
    result,
    top,
)
from ops.cli.base import PUBLIC_TASKS, cli
from ops.cli.enqueue import check_call

__all__ = [
    "PUBLIC_TASKS",
    "check_call",
    "cli",
    "dead_letters",
    "enqueue",
    "failures",
    "follow",
    "health",
    "main",
    "migrate_keys",
    "owed_events",
    "queues",
    "rabbitmq",
    "result",
    "top",
]

cli.add_command(rabbitmq.rabbitmq)


def main() -> None:
    # Each command reports its failures itself; the libraries' logs would repeat them
    # unless asked for with --verbose.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    cli(prog_name="apiworker")
