"""`apiworker dead-letters`: list and replay the jobs the broker parked."""

from __future__ import annotations

import click

from brokers import (
    ALL_QUEUES,
    ParkedMessage,
)
from ops.cli.base import (
    Services,
    cli,
    json_line,
)


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect and replay jobs parked in a queue's `.dead` queue (a list, on Redis).

    A job is parked when BROKER_DELIVERY_LIMIT of its deliveries ended without an
    acknowledgement because its worker died (it keeps killing its workers), or, on
    RabbitMQ, when no task could run it (on Redis that one is in `apiworker failures`).
    """


queue_choice = click.option(
    "--queue",
    "queue_names",
    type=click.Choice(ALL_QUEUES),
    multiple=True,
    help="Only this queue (repeatable).  [default: every queue]",
)


def parked_line(message: ParkedMessage) -> str:
    call = json_line(message.args) + ("" if not message.kwargs else f" {json_line(message.kwargs)}")
    return "  ".join(
        (
            message.queue,
            message.task_id or "?",
            message.task,
            call,
            f"reason={message.reason}",
            f"deliveries={message.deliveries}",
        )
    )


def parked_json(message: ParkedMessage) -> str:
    return json_line(
        {
            "queue": message.queue,
            "task": message.task,
            "task_id": message.task_id,
            "args": message.args,
            "kwargs": message.kwargs,
            "reason": message.reason,
            "deliveries": message.deliveries,
        }
    )


@dead_letters.command("list")
@queue_choice
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def list_dead_letters(
    services: Services, queue_names: tuple[str, ...], count: int, as_json: bool
) -> None:
    """Show parked jobs, oldest first: queue, job id, task, arguments, why, deliveries.

    Nothing is removed.
    """
    broker = services.broker()
    found = broker.parked(queue_names or ALL_QUEUES, count)
    if not found and not as_json:
        click.echo("no dead-lettered jobs", err=True)
    for message in found:
        click.echo(parked_json(message) if as_json else parked_line(message))


@dead_letters.command("replay")
@queue_choice
@click.option("--count", type=click.IntRange(min=1), help="Replay at most N jobs.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every parked job.")
@click.pass_obj
def replay_dead_letters(
    services: Services, queue_names: tuple[str, ...], count: int | None, replay_all: bool
) -> None:
    """Send parked jobs back to the queue they came from, with a fresh delivery count.

    Each job is published (and confirmed by RabbitMQ; on Redis, moved in one step) before
    it leaves the dead-letter queue, so a replay interrupted halfway loses nothing.
    """
    if (count is None) == (not replay_all):
        raise click.UsageError("give --count N or --all (not both)")
    broker = services.broker()
    replayed = broker.replay_parked(queue_names or ALL_QUEUES, count)
    if not replayed:
        click.echo("no dead-lettered jobs to replay", err=True)
    for message in replayed:
        click.echo(f"replayed {parked_line(message)}")
