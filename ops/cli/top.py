"""`apiworker top`: the fleet on one screen, refreshed in place (ops/top.py draws it)."""

from __future__ import annotations

import click

from ops.cli.base import Services, cli
from ops.top import Fleet
from ops.top import run as run_top
from settings import get_settings
from upstreams import all_upstreams


@cli.command()
@click.option("--once", is_flag=True, help="Print one snapshot and exit (for scripts).")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
    help="Seconds between refreshes.",
)  # fmt: skip
@click.option(
    "--metrics", "metrics_urls", metavar="URL", multiple=True,
    help="A worker's /metrics endpoint, for upstream calls/s (repeatable).",
)  # fmt: skip
@click.pass_obj
def top(services: Services, once: bool, interval: float, metrics_urls: tuple[str, ...]) -> None:
    """A live screen of the fleet: per queue ready, in hand and dead; per worker the jobs
    in flight and the oldest; jobs, failures and upstream calls per second over the last
    minute; each breaker's state; each upstream's budget (current and configured rate, a
    pause, requests in flight, and with --metrics 429s per minute and the calls waiting
    by class). Ctrl-C leaves it."""
    keys = services.keys
    api = get_settings().api
    fleet = Fleet(
        broker=services.broker(),
        results=services.results(),
        celery=services.celery(),
        streams={"jobs": keys.all_events, "failures": keys.failures},
        breaker_prefix=services.settings.result_key_prefix,
        services=[upstream.name for upstream in all_upstreams() if upstream.breaker],
        metrics_urls=metrics_urls,
        budgets={u.name: api.rate_limit_policy(u).rate for u in all_upstreams()},
    )
    title = f"apiworker top: {services.broker().display_url}"
    run_top(fleet, title=title, once=once, interval=interval)
