"""`apiworker queues`: each queue's waiting, unacknowledged and parked jobs."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from brokers import (
    ALL_QUEUES,
)
from ops.cli import rabbitmq
from ops.cli.base import (
    Services,
    cli,
    echo_table,
)


def count_cell(value: int | None) -> str:
    return "-" if value is None else str(value)


@cli.command()
@click.pass_obj
def queues(services: Services) -> None:
    """Show each queue's jobs: waiting (ready), taken by a worker but not yet
    acknowledged (in hand), and parked (dead).

    A "-" is what the broker cannot tell: RabbitMQ reports unacknowledged counts only
    through its management API (RABBITMQ_MANAGEMENT_URL).
    """
    depths = services.broker().depths(ALL_QUEUES)
    # rich lays the table out; a plain box keeps each row one line of space-separated
    # cells, which scripts (and awk) read as before.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("queue")
    for column in ("ready", "in_hand", "dead"):
        table.add_column(column, justify="right")
    for depth in depths:
        table.add_row(
            depth.name, str(depth.ready), count_cell(depth.unacked), count_cell(depth.dead)
        )
    echo_table(table)
    # On a RabbitMQ cluster (with its management API): the nodes, each queue's replicas.
    if view := rabbitmq.cluster_view(services.broker()):
        click.echo(f"\nnodes: {rabbitmq.node_line(view)[1]}")
        for _, line in rabbitmq.queue_lines(view):
            click.echo(line)
