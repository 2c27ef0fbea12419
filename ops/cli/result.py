"""`apiworker result`: read one stored result (and its metadata) of the results contract."""

from __future__ import annotations

import click

from ops.cli.base import (
    Services,
    cli,
    fail,
    json_line,
)


@cli.command()
@click.argument("kind")
@click.argument("ident")
@click.option("--meta", is_flag=True, help="Also print the metadata hash as a JSON line.")
@click.pass_obj
def result(services: Services, kind: str, ident: str, meta: bool) -> None:
    """Print the stored JSON of the result KIND:IDENT.

    For example `apiworker result pokemon charizard`. Exit 1 when nothing is stored.
    """
    client = services.results()
    key = services.keys.result(kind, ident)
    value = client.get(key)
    if value is None:
        fail(f"no result at {key}")
    click.echo(value)
    if meta:
        click.echo(json_line(client.hgetall(services.keys.meta(kind, ident))))
