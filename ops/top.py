"""`apiworker top`: the fleet on one screen, refreshed in place, the worst thing first.

Like `rq info` and `htop`, and built only on what the service already exposes:

- **queues**: ready, in hand and parked per queue, from the broker's own module
  (`brokers.open_broker(...).depths`, what `apiworker queues` prints);
- **workers**: jobs in flight and the oldest one, from Celery's `inspect active`
  (a broadcast every refresh: one reply per worker);
- **rates** over the last minute: stored results (`events:results`) and failures
  (`events:failures`) from the streams' own `entries-added` counters, seeded from the
  last minute of entries on the first frame; upstream calls from the workers' Prometheus
  counter (`apiworker_upstream_requests_total`) when `--metrics` names their endpoints;
- **breakers**: open, half-open (a probe call out) or closed, from their Redis keys;
- **budgets**: per upstream the fleet's current and configured rate, a pause the
  upstream asked for, requests in flight (`apis.budget.read_state`), and from the
  workers' metrics (with `--metrics`) the 429s per minute and the calls waiting for
  budget by class; the jobs waiting in the broker are the upstream's queue above.

`rich` draws the tables (`rich.live` keeps them in place); `--once` prints one snapshot
and exits, for scripts.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from apis.breaker import state_keys
from apis.budget import BudgetState, read_state
from brokers import ALL_QUEUES, Broker, QueueDepth

WINDOW_SECONDS = 60.0
UPSTREAM_COUNTER = "apiworker_upstream_requests"
PAUSES_COUNTER = "apiworker_budget_pauses"
WAITING_GAUGE = "apiworker_budget_waiting"
# How much of a stream the first frame reads to seed its rate (then counters take over).
_SEED_LIMIT = 20_000


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's jobs in flight; the oldest one's task and age (when its clock is
    this host's: Celery reports a job's start on the worker's monotonic clock)."""

    name: str
    in_flight: int
    oldest_task: str | None
    oldest_age: float | None


@dataclass(frozen=True)
class BudgetRow:
    """One upstream's budget on screen: Redis's state, its configured rate, and from the
    workers' metrics its 429s per minute and the calls waiting by class."""

    state: BudgetState
    configured: float
    refused_per_min: float | None = None
    waiting: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    queues: list[QueueDepth]
    workers: list[WorkerLoad]
    jobs_per_s: float | None
    failures_per_s: float | None
    upstream_per_s: float | None
    breakers: dict[str, str]
    budgets: list[BudgetRow] = field(default_factory=list)


@dataclass
class RateMeter:
    """A per-second rate over the last minute of samples of a growing total."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, at: float, total: float) -> None:
        self.samples.append((at, total))
        while len(self.samples) > 2 and self.samples[1][0] <= at - WINDOW_SECONDS:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (first_at, first), (last_at, last) = self.samples[0], self.samples[-1]
        if last_at <= first_at:
            return None
        return max(last - first, 0.0) / (last_at - first_at)


class Fleet:
    """Reads a snapshot of the fleet; keeps the rate history between frames."""

    def __init__(
        self,
        *,
        broker: Broker,
        results: redis.Redis,
        celery: Any,
        streams: Mapping[str, str | Sequence[str]],
        breaker_prefix: str,
        services: Sequence[str],
        metrics_urls: Sequence[str] = (),
        budgets: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.results = results
        self.celery = celery
        # "jobs" / "failures" -> their stream keys (the jobs' are one per event partition)
        self.streams = {
            name: [keys] if isinstance(keys, str) else list(keys) for name, keys in streams.items()
        }
        self.breaker_prefix = breaker_prefix
        self.services = list(services)
        self.metrics_urls = list(metrics_urls)
        self.clock = clock
        #: Upstream -> its configured rate (0: none), for the budgets table.
        self.budgets = dict(budgets or {})
        self.meters = {name: RateMeter() for name in (*self.streams, "upstream")}
        self.refusals = {service: RateMeter() for service in self.budgets}

    def snapshot(self) -> Snapshot:
        now = self.clock()
        for name, key in self.streams.items():
            self._sample_stream(name, key, now)
        families = self._metrics()
        upstream = self.upstream_total(families)
        if upstream is not None:
            self.meters["upstream"].add(now, upstream)
        return Snapshot(
            queues=self.broker.depths(ALL_QUEUES),
            workers=self.workers(),
            jobs_per_s=self.meters["jobs"].rate(),
            failures_per_s=self.meters["failures"].rate(),
            upstream_per_s=self.meters["upstream"].rate() if self.metrics_urls else None,
            breakers=self.breakers(),
            budgets=self.budget_rows(families, now),
        )

    def _sample_stream(self, name: str, keys: Sequence[str], now: float) -> None:
        meter = self.meters[name]
        added = sum(_entries_added(self.results, key) for key in keys)
        if not meter.samples:  # first frame: the last minute, read from the streams themselves
            since = f"{int((now - WINDOW_SECONDS) * 1000)}-0"
            recent = sum(
                len(self.results.xrange(key, min=since, count=_SEED_LIMIT) or []) for key in keys
            )
            meter.add(now - WINDOW_SECONDS, added - recent)
        meter.add(now, added)

    def workers(self) -> list[WorkerLoad]:
        replies = self.celery.control.inspect(timeout=1.0).active() or {}
        here = socket.gethostname()
        loads = []
        for name, jobs in replies.items():
            oldest = min(jobs, key=lambda job: job.get("time_start") or 0, default=None)
            age = None
            if oldest and oldest.get("time_start") and name.endswith(f"@{here}"):
                age = max(time.monotonic() - float(oldest["time_start"]), 0.0)
            loads.append(WorkerLoad(name, len(jobs), oldest.get("name") if oldest else None, age))
        return sorted(loads, key=lambda load: (-load.in_flight, load.name))

    def _metrics(self) -> list[Any] | None:
        """Every metric family of the given workers' endpoints (None: none given)."""
        if not self.metrics_urls:
            return None
        families: list[Any] = []
        for url in self.metrics_urls:
            try:
                text = requests.get(url, timeout=2).text
            except requests.RequestException:
                continue  # a worker restarting: its share is missing from this frame
            families.extend(text_string_to_metric_families(text))
        return families

    def upstream_total(self, families: list[Any] | None = None) -> float | None:
        """Upstream requests sent so far, summed over the given workers' metrics."""
        if families is None:
            families = self._metrics()
            if families is None:
                return None
        return summed(families, UPSTREAM_COUNTER, "_total")

    def budget_rows(self, families: list[Any] | None, now: float) -> list[BudgetRow]:
        """Each upstream's budget: its state in Redis, and what the workers report."""
        rows = []
        for service, configured in self.budgets.items():
            state = read_state(self.results, self.breaker_prefix, service)
            refused: float | None = None
            waiting: dict[str, float] = {}
            if families is not None:
                meter = self.refusals[service]
                meter.add(now, summed(families, PAUSES_COUNTER, "_total", service=service))
                rate = meter.rate()
                refused = None if rate is None else rate * 60
                for family in families:
                    if family.name == WAITING_GAUGE:
                        for sample in family.samples:
                            if sample.labels.get("service") == service:
                                klass = sample.labels.get("job_class", "")
                                waiting[klass] = waiting.get(klass, 0.0) + sample.value
            rows.append(BudgetRow(state, configured, refused, waiting))
        # A paused upstream first, then the busiest.
        return sorted(rows, key=lambda row: (-row.state.paused_for, -row.state.in_flight))

    def breakers(self) -> dict[str, str]:
        pipe = self.results.pipeline(transaction=False)
        for service in self.services:
            open_key, _tripped, probe_key, _failures = state_keys(self.breaker_prefix, service)
            pipe.exists(open_key)
            pipe.exists(probe_key)
        flags = pipe.execute()
        states = {}
        for index, service in enumerate(self.services):
            is_open, probing = flags[2 * index], flags[2 * index + 1]
            states[service] = "open" if is_open else "half-open" if probing else "closed"
        return dict(sorted(states.items(), key=lambda item: item[1] == "closed"))


def summed(families: Iterable[Any], name: str, suffix: str, **labels: str) -> float:
    """The sum of a metric's samples named `name` + `suffix` with these labels (families
    as prometheus_client's text parser gives them; the bench reads its counters so too)."""
    return float(
        sum(
            sample.value
            for family in families
            if family.name == name
            for sample in family.samples
            if sample.name.endswith(suffix)
            and all(sample.labels.get(key) == value for key, value in labels.items())
        )
    )


def _entries_added(client: redis.Redis, key: str) -> int:
    """Entries ever added to a stream (Redis 7's counter, which trimming leaves alone)."""
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError:  # no such stream yet
        return 0
    added = info.get("entries-added")
    return int(added) if added is not None else int(info.get("length", 0))


def render(snapshot: Snapshot, title: str) -> Group:
    queues = Table(title="queues", title_justify="left")
    for column in ("queue", "ready", "in hand", "dead"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for depth in sorted(snapshot.queues, key=lambda d: (-(d.dead or 0), -d.ready, d.name)):
        queues.add_row(depth.name, str(depth.ready), _count(depth.unacked), _count(depth.dead))

    workers = Table(title="workers", title_justify="left")
    for column in ("worker", "in flight", "oldest job", "running for"):
        workers.add_column(column, justify="right" if column == "in flight" else "left")
    for load in snapshot.workers:
        age = f"{load.oldest_age:.1f}s" if load.oldest_age is not None else "-"
        workers.add_row(load.name, str(load.in_flight), load.oldest_task or "-", age)
    if not snapshot.workers:
        workers.add_row("(no worker answered)", "-", "-", "-")

    rates = Table(title="last minute", title_justify="left")
    for column in ("jobs/s", "failures/s", "upstream calls/s"):
        rates.add_column(column, justify="right")
    rates.add_row(
        _rate(snapshot.jobs_per_s), _rate(snapshot.failures_per_s), _rate(snapshot.upstream_per_s)
    )

    breakers = Table(title="breakers", title_justify="left")
    breakers.add_column("service")
    breakers.add_column("state")
    for service, state in snapshot.breakers.items():
        style = {"open": "bold red", "half-open": "yellow"}.get(state, "green")
        breakers.add_row(service, f"[{style}]{state}[/]")
    budgets = Table(title="budgets", title_justify="left")
    for column in ("upstream", "rate/s", "configured/s", "paused", "in flight", "429s/min"):
        budgets.add_column(column, justify="left" if column == "upstream" else "right")
    budgets.add_column("waiting on-demand/bulk", justify="right")
    for row in snapshot.budgets:
        budget = row.state
        paused = f"[bold red]{budget.paused_for:.1f}s[/]" if budget.paused_for else "-"
        waiting = (
            f"{row.waiting.get('on_demand', 0):.0f}/{row.waiting.get('bulk', 0):.0f}"
            if row.waiting
            else "-"
        )
        budgets.add_row(
            budget.service,
            _rate(budget.rate) if budget.rate else "unbounded",
            _rate(row.configured) if row.configured else "none",
            paused,
            str(budget.in_flight),
            _rate(row.refused_per_min),
            waiting,
        )
    return Group(title, queues, workers, rates, breakers, budgets)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def run(
    fleet: Fleet, *, title: str, once: bool, interval: float, console: Console | None = None
) -> None:
    """Draw the fleet every `interval` seconds until Ctrl-C, or once."""
    console = console or Console()
    if once:
        if fleet.metrics_urls:  # a rate needs two readings of the counters
            fleet.snapshot()
            time.sleep(interval)
        console.print(render(fleet.snapshot(), title))
        return
    with Live(render(fleet.snapshot(), title), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(fleet.snapshot(), title), refresh=True)
        except KeyboardInterrupt:
            pass
