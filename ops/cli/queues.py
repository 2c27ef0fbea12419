"""`apiworker queues`: each queue's waiting, unacknowledged and parked jobs."""

from __future__ import annotations

import click

from brokers import (
    ALL_QUEUES,
)
from ops import rabbitmq_cli
from ops.cli.base import (
    Services,
    cli,
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
    click.echo(f"{'queue':<10} {'ready':>7} {'unacked':>8} {'dead':>6}")
    for depth in depths:
        click.echo(
            f"{depth.name:<10} {depth.ready:>7} {count_cell(depth.unacked):>8} "
            f"{count_cell(depth.dead):>6}"
        )
    # On a RabbitMQ cluster (with its management API): the nodes, each queue's replicas.
    if view := rabbitmq_cli.cluster_view(services.broker()):
        click.echo(f"\nnodes: {rabbitmq_cli.node_line(view)[1]}")
        for _, line in rabbitmq_cli.queue_lines(view):
            click.echo(line)
