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

#: The kind whose results are stored under the canonical name, found from an id through
#: `index:pokemon-ids` (a job sent with `25` stores `pokemon:pikachu`).
BY_NAME = "pokemon"


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

    For example `apiworker result pokemon charizard` (or `pokemon 6`: an id is looked up
    in `index:pokemon-ids`). Exit 1 when nothing is stored, 2 for a kind no upstream
    stores (the valid kinds are listed).
    """
    client = services.results()
    keys = services.keys
    if kind == BY_NAME and ident.isdigit():
        name = client.hget(keys.pokemon_ids_for(ident), ident)
        ident = str(name) if name else ident
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
