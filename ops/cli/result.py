"""`apiworker result`: read one stored result (and its metadata) of the results contract."""

from __future__ import annotations

import click

from ops.cli.base import (
    Services,
    cli,
    fail,
    json_line,
)
from upstreams import all_upstreams


def result_kinds() -> list[str]:
    """Every kind of result the registered upstreams store."""
    return [kind for upstream in all_upstreams() for kind in upstream.result_kinds]


@cli.command()
@click.argument("kind")
@click.argument("ident")
@click.option("--meta", is_flag=True, help="Also print the metadata hash as a JSON line.")
@click.pass_obj
def result(services: Services, kind: str, ident: str, meta: bool) -> None:
    """Print the stored JSON of the result KIND:IDENT.

    IDENT may also be an alias, for a kind whose upstream's registry entry declares one
    (`upstreams.ResultAlias`): it is looked up in that kind's alias index, and the result
    it names is printed. Exit 1 when nothing is stored, 2 for a kind no upstream stores
    (the valid kinds are listed).
    """
    client = services.results()
    keys = services.keys
    if keys.alias_index(kind) is not None:
        found = client.hget(keys.alias_index_for(kind, ident), ident)
        ident = str(found) if found else ident
    value = client.get(keys.result(kind, ident))
    if value is None:
        kinds = result_kinds()
        if kind not in kinds:
            raise click.UsageError(f"no kind {kind!r}: one of {', '.join(kinds)}")
        # Which Redis was read: with REDIS_URL unset it is whatever answers on localhost.
        fail(f"no result at {keys.result(kind, ident)} in {services.results_endpoint().describe()}")
    click.echo(value)
    if meta:
        click.echo(json_line(client.hgetall(keys.meta(kind, ident))))
