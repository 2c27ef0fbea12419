"""`apiworker send-owed-events`: pay the change events dead writers left owed."""

from __future__ import annotations

import click

from ops.cli.base import Services, cli, json_line
from ops.owed_events import send_owed
from results.runtime import Runtime


@cli.command("send-owed-events")
@click.option("--dry-run", is_flag=True, help="Count the owed events; send nothing.")
@click.pass_obj
def send_owed_events(services: Services, dry_run: bool) -> None:
    """Send every change event a result's metadata says is still owed (its writer died
    between the result's write and its event, and no job has asked for it since), and
    print how many were owed and appended as one JSON line.

    Safe while workers run, and at any time: an event is appended once per fence, in
    fence order, whoever sends it.
    """
    store = Runtime.build(services.settings, services.results()).store
    click.echo(json_line({"dry_run": dry_run, **send_owed(store, dry_run=dry_run)}))
