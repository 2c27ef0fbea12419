"""`apiworker migrate-keys`: move a results Redis to the key layout of this version."""

from __future__ import annotations

import click

from ops.cli.base import Services, cli, json_line
from ops.migrate_keys import migrate


@cli.command("migrate-keys")
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@click.pass_obj
def migrate_keys(services: Services, dry_run: bool) -> None:
    """Move metadata, fences and the alias indexes of an earlier layout to this one's
    names (values keep theirs), and print what moved as one JSON line.

    Idempotent and resumable: run it again at any time. Safe while workers of this
    version run; stop workers of the earlier layout first (they write the old names).
    Change events are not copied: a stream no longer written is left for readers to
    finish (`streams left to readers`).
    """
    moved = migrate(services.results(), services.keys, dry_run=dry_run)
    click.echo(json_line({"dry_run": dry_run, **moved}))
