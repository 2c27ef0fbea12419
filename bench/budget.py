"""Scenario `budget`: spending an upstream's budget, `python -m bench.budget`.

The sandbox upstream enforces a budget (BENCH_RATE requests/s, 40 by default) and
answers 429 with `Retry-After: 1` above it; its latency is 50 ms. Each system runs:

- **burst**: 10x the budget of on-demand jobs sent at once, the rate configured;
- **cut**: the same burst, the upstream halving its budget without notice once a third
  is stored (the project with no rate configured; the baselines with the rate their
  users would write, since they cannot learn one);
- **refresh** (the project): a catalog refresh of 1,200 names using the whole budget, and
  10 on-demand jobs sent during it, 0.5 s apart;
- **backlog** (the project): another upstream with no limit (CMS) and its p95 from sent
  to result over 40 jobs sent one after another, first with nothing else queued, then
  while 2,000 PokeAPI jobs wait for the configured rate (the idle figure from the same
  run).

Reported per run: the 429 share of requests, the time against the budget's floor (jobs
/ rate), the re-published messages (counted from each worker's own log: the project's
deferrals and retries, Celery's "retry", Dramatiq's "Retrying message"), the jobs moved
once from RabbitMQ's default queue to their upstream's queue (`moved_once`: the
project's admission there, neither run nor retried) and each on-demand job's wait.
Systems: the project (`make run`: one worker process per core), Celery's per-task
`rate_limit` (bench/baselines/celery_rate_limit.py) and Dramatiq's `WindowRateLimiter`
(bench/baselines/dramatiq_rate_limit.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO_ROOT,
    SampledWorker,
    SandboxProcess,
    clean_environment,
    notifying_redis,
)
from bench.senders import sender
from bench.systems import CELERY, DRAMATIQ_PROTOCOL, FETCH_TASK, System, settings_names
from ops.processes.ports import free_port
from ops.processes.redis_server import DisposableRedis
from ops.producer import producer_app

PROJECT = System(
    name="project",
    module="worker",
    queue="celery",
    description="make run (one process per core, threads x32), the budget",
    command=("-m", "ops.run", "--no-beat", "--no-flower"),
)
CELERY_RATE_LIMIT = System(
    name="celery-rate_limit",
    module="bench.baselines.celery_rate_limit",
    queue="celery",
    args=("--loglevel=INFO",),
    description='tutorial worker, @app.task(rate_limit="40/s"), autoretry_for HTTPError',
)
DRAMATIQ_RATE_LIMIT = System(
    name="dramatiq-RateLimiter",
    module="bench.baselines.dramatiq_rate_limit",
    queue="default",
    command=("-m", "dramatiq", "bench.baselines.dramatiq_rate_limit"),
    description="dramatiq CLI defaults, WindowRateLimiter(limit=rate, window=1) in Redis",
    protocol=DRAMATIQ_PROTOCOL,
    actor="fetch_pokemon",
)
#: CMS jobs timed in each phase of the backlog scenario.
OTHER_SAMPLES = 40
#: The PokeAPI backlog of that scenario.
BACKLOG_JOBS = 2000
SYSTEMS = {s.name: s for s in (PROJECT, CELERY_RATE_LIMIT, DRAMATIQ_RATE_LIMIT)}
SCENARIOS = ("burst", "cut", "refresh", "backlog")
REPUBLISHED_MARKS = {
    PROJECT.name: ("job retry",),
    CELERY_RATE_LIMIT.name: ("retry: Retry in",),
    DRAMATIQ_RATE_LIMIT.name: ("Retrying message",),
}


def log(message: str) -> None:
    print(f"[bench.budget {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Upstream:
    """The sandbox process and its admin API (budget, counts)."""

    def __init__(self, latency: float) -> None:
        self.process = SandboxProcess(latency, prewarm=False)

    def start(self) -> Upstream:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.process.admin(method, path, body)

    def reset(self, rate: float) -> None:
        self._admin("POST", "/reset")
        self._admin("PUT", "/budget/pokemon", {"rate": rate, "retry_after": 1})

    def set_rate(self, rate: float) -> None:
        self._admin("PUT", "/budget/pokemon", {"rate": rate})

    def counts(self) -> tuple[int, int]:
        """(requests answered, requests refused with 429) on the pokemon route."""
        budget = self._admin("GET", "/budget")["budgets"].get("pokemon", {})
        return int(budget.get("allowed", 0)), int(budget.get("refused", 0))


class Run:
    """One system's workers on their own broker database, and how to send it jobs."""

    def __init__(
        self,
        system: System,
        redis_server: DisposableRedis,
        upstream: Upstream,
        log_dir: Path,
        env: dict[str, str],
        broker_url: str = "",
    ) -> None:
        self.system = system
        self.redis_server = redis_server
        self.broker_url = broker_url or redis_server.url_for(3)
        self.producer = producer_app(self.broker_url, redis_server.url_for(2))
        self.results = redis_server.client(0)
        environment = {
            **clean_environment(settings_names()),
            "REDIS_URL": redis_server.url_for(0),
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": redis_server.url_for(2),
            "DRAMATIQ_BROKER_URL": self.broker_url,
            "POKEAPI_BASE_URL": upstream.process.pokeapi_url,
            # The other upstream of the backlog scenario, with no limit.
            "CMS_BASE_URL": f"{upstream.process.base_url}/api/v1",
            "METRICS_PORT": str(free_port()),
            **env,
        }
        self.worker = SampledWorker(
            system.module, environment, system.args, log_dir,
            label=f"{system.name}-{int(time.time())}", command=system.command,
        )  # fmt: skip

    def start(self, probe_name: str) -> Run:
        for db in (0, 2, 3):
            self.redis_server.client(db).flushdb()
        ready: Callable[[], bool] | None = None
        if self.system.protocol != CELERY:
            sent: list[str] = []

            def stored_one() -> bool:
                if not sent:
                    with sender(self.system, self.producer, self.broker_url) as send:
                        sent.append(send(probe_name))
                return bool(self.results.exists(f"pokemon:{probe_name}"))

            ready = stored_one
        self.worker.start(self.producer, timeout=90, ready=ready)
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.producer.close()

    def republished(self) -> int:
        text = self.worker.log_path.read_text(errors="replace")
        return sum(text.count(mark) for mark in REPUBLISHED_MARKS[self.system.name])

    def moved(self) -> int:
        """Jobs the project's RabbitMQ admission moved once from the default queue to
        their upstream's queue (worker/amqp_admission.py): neither run nor retried."""
        text = self.worker.log_path.read_text(errors="replace")
        return text.count("job moved") if self.system is PROJECT else 0

    def send(self, names: Sequence[str], task: str = FETCH_TASK) -> dict[str, float]:
        sent_at: dict[str, float] = {}
        with sender(self.system, self.producer, self.broker_url) as send:
            for name in names:
                send(name)
                sent_at[name] = time.monotonic()
        return sent_at

    def wait_stored(self, names: Sequence[str], timeout: float) -> dict[str, float]:
        """When each result appeared (polled every 50 ms), until all or `timeout`."""
        stored: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            pipe = self.results.pipeline(transaction=False)
            for name in waiting:
                pipe.exists(f"pokemon:{name}")
            now = time.monotonic()
            for name, there in zip(waiting, pipe.execute(), strict=True):
                if there:
                    stored[name] = now
            waiting = [name for name in waiting if name not in stored]
            time.sleep(0.05)
        return stored


def _finish(
    run: Run,
    upstream: Upstream,
    names: Sequence[str],
    rate: float,
    started: float,
    before: int,
    stored: dict[str, float],
) -> dict[str, Any]:
    allowed, refused = upstream.counts()
    elapsed = (max(stored.values()) if stored else time.monotonic()) - started
    floor = len(names) / rate
    return {
        "jobs": len(names),
        "stored": len(stored),
        "seconds": round(elapsed, 2),
        "floor_s": round(floor, 2),
        "x_floor": round(elapsed / floor, 2),
        "requests": allowed + refused,
        "refused_429": refused,
        "share_429_pct": round(100 * refused / max(1, allowed + refused), 2),
        "republished": run.republished() - before,
        "moved_once": run.moved(),
    }


def scenario_burst(
    run: Run, upstream: Upstream, names: Sequence[str], rate: float, timeout: float
) -> dict[str, Any]:
    """10x the budget of on-demand jobs at once, the rate configured."""
    upstream.reset(rate)
    before = run.republished()
    started = time.monotonic()
    run.send(names)
    stored = run.wait_stored(names, timeout)
    return _finish(run, upstream, names, rate, started, before, stored)


def scenario_cut(
    run: Run, upstream: Upstream, names: Sequence[str], rate: float, timeout: float
) -> dict[str, Any]:
    """The upstream halves its budget, without notice, once a third is stored; the
    floor is that third at `rate` and the rest at half of it."""
    upstream.reset(rate)
    before = run.republished()
    started = time.monotonic()
    run.send(names)
    third = len(names) // 3
    stored: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(stored) < third and time.monotonic() < deadline:
        stored.update(run.wait_stored([n for n in names if n not in stored], 0.2))
    upstream.set_rate(rate / 2)
    stored.update(
        run.wait_stored(
            [n for n in names if n not in stored], max(1.0, deadline - time.monotonic())
        )
    )
    figures = _finish(run, upstream, names, rate, started, before, stored)
    floor = third / rate + (len(names) - third) / (rate / 2)
    figures["floor_s"] = round(floor, 2)
    figures["x_floor"] = round(figures["seconds"] / floor, 2)
    return figures


def scenario_refresh(
    run: Run,
    upstream: Upstream,
    catalog: Sequence[str],
    extra: Sequence[str],
    rate: float,
    timeout: float,
) -> dict[str, Any]:
    """A refresh of `catalog` with the whole budget; `extra` on-demand jobs during it."""
    upstream.reset(rate)
    started = time.monotonic()
    run.producer.send_task("tasks.pokemon.refresh_catalog")
    # The budget binds once the batches run: the on-demand jobs go in from the 100th.
    while len(run.wait_stored(catalog[:200], 0.1)) < 100 and time.monotonic() - started < timeout:
        pass
    waits = []
    for name in extra:
        sent = time.monotonic()
        run.send([name])
        got = run.wait_stored([name], 30)
        waits.append(round(got[name] - sent, 2) if name in got else None)
        time.sleep(max(0.0, 0.5 - (time.monotonic() - sent)))
    stored = run.wait_stored(catalog, max(1.0, timeout - (time.monotonic() - started)))
    allowed, refused = upstream.counts()
    elapsed = max(stored.values()) - started if stored else 0.0
    floor = (len(catalog) + len(extra)) / rate
    return {
        "names": len(catalog),
        "stored": len(stored),
        "seconds": round(elapsed, 2),
        "floor_s": round(floor, 2),
        "x_floor": round(elapsed / floor, 2),
        "refused_429": refused,
        "share_429_pct": round(100 * refused / max(1, allowed + refused), 2),
        "on_demand_waits_s": waits,
        "republished": run.republished(),
        "moved_once": run.moved(),
    }


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 3)


def _other_upstream_latencies(run: Run, slugs: Sequence[str]) -> list[float]:
    """Each CMS job (an upstream with no limit) sent alone, from sent to its result; the
    stored articles are deleted first, so each one asks the upstream."""
    run.results.delete(*(f"article:{slug}" for slug in slugs))
    waits = []
    for slug in slugs:
        sent = time.monotonic()
        run.producer.send_task("tasks.cms.sync_article", args=[slug]).get(timeout=60)
        waits.append(time.monotonic() - sent)
    return waits


def scenario_backlog(
    run: Run,
    upstream: Upstream,
    names: Sequence[str],
    rate: float,
    timeout: float,
    *,
    samples: int = OTHER_SAMPLES,
) -> dict[str, Any]:
    """Another upstream's latency while the limited one has a backlog: `samples` CMS
    jobs one after another with nothing else queued (idle), then `names` PokeAPI jobs at
    once, and once the budget binds the same CMS jobs again; p95 of each, same run."""
    upstream.reset(rate)
    slugs = [f"article-{number:02d}" for number in range(1, samples + 1)]
    _other_upstream_latencies(run, slugs[:5])  # the CMS client's connections made
    idle = _other_upstream_latencies(run, slugs)
    before = run.republished()
    started = time.monotonic()
    run.send(names)
    # The budget binds once a second's worth is stored.
    deadline = started + timeout
    while len(run.wait_stored(names[: int(rate) * 3], 0.1)) < rate and time.monotonic() < deadline:
        pass
    busy = _other_upstream_latencies(run, slugs)
    stored = len(run.wait_stored(names, 0.1))
    allowed, refused = upstream.counts()
    return {
        "backlog": len(names),
        "samples": samples,
        "idle_p95_s": _p95(idle),
        "backlog_p95_s": _p95(busy),
        "x_idle": round(_p95(busy) / _p95(idle), 2),
        "idle_max_s": round(max(idle), 3),
        "backlog_max_s": round(max(busy), 3),
        "backlog_left": len(names) - stored,
        "seconds": round(time.monotonic() - started, 2),
        "refused_429": refused,
        "share_429_pct": round(100 * refused / max(1, allowed + refused), 2),
        "republished": run.republished() - before,
        "moved_once": run.moved(),
    }


def _rabbit_node() -> tuple[Any, Any]:
    """A private RabbitMQ node (the suite's harness) and the server to make vhosts on."""
    from tests.support.rabbitmq import RabbitNode, RabbitServer

    node = RabbitNode().start()
    return node, RabbitServer.of_node(node)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.budget", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rate", type=float, default=40.0, help="the upstream's budget, requests/s"
    )
    parser.add_argument("--latency", type=float, default=0.05, help="upstream latency (s)")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS)
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per scenario at most")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument(
        "--broker",
        choices=("redis", "amqp"),
        default="redis",
        help="amqp: a private RabbitMQ node, a fresh vhost per run (the project only)",
    )
    args = parser.parse_args(argv)
    wanted = set(args.scenarios.split(","))
    if args.broker == "amqp" and args.systems != PROJECT.name:
        parser.error("--broker amqp runs the project alone (--systems project)")
    log_dir = Path(tempfile.mkdtemp(prefix="apiworker-bench-budget-"))
    redis_server = notifying_redis()
    redis_server.start()
    upstream = Upstream(args.latency).start()
    results: dict[str, dict[str, Any]] = {}
    rabbit = _rabbit_node() if args.broker == "amqp" else None
    try:
        index = json.loads(
            urllib.request.urlopen(
                f"{upstream.process.pokeapi_url}/pokemon?limit=100000", timeout=30
            ).read()
        )
        names = [entry["name"] for entry in index["results"]]
        jobs = int(args.rate * 10)
        burst_names = names[:jobs]
        for system_name in args.systems.split(","):
            system = SYSTEMS[system_name]
            figures: dict[str, Any] = {}
            for scenario in SCENARIOS:
                if scenario not in wanted or (
                    scenario in ("refresh", "backlog") and system is not PROJECT
                ):
                    continue
                env = {"BENCH_RATE": str(args.rate)}
                if system is PROJECT and scenario != "cut":
                    env["POKEAPI_RATE_LIMIT"] = str(args.rate)
                if scenario == "refresh":
                    env["POKEMON_CATALOG"] = ",".join(names[:1200])
                broker_url = rabbit[1].create_vhost() if rabbit is not None else ""
                run = Run(system, redis_server, upstream, log_dir, env, broker_url)
                run.start(names[-1])
                try:
                    log(f"{system.name}: {scenario}")
                    if scenario == "burst":
                        figures[scenario] = scenario_burst(
                            run, upstream, burst_names, args.rate, args.timeout
                        )
                    elif scenario == "cut":
                        figures[scenario] = scenario_cut(
                            run, upstream, burst_names, args.rate, args.timeout
                        )
                    elif scenario == "backlog":
                        # The sandbox has fewer names than the backlog: the rest repeat
                        # (queued all the same, and held by the budget like the others).
                        backlog = [names[i % len(names)] for i in range(BACKLOG_JOBS)]
                        figures[scenario] = scenario_backlog(
                            run, upstream, backlog, args.rate, args.timeout
                        )
                    else:
                        figures[scenario] = scenario_refresh(
                            run, upstream, names[:1200], names[1200:1210], args.rate, args.timeout
                        )
                    log(f"{system.name}: {scenario} {figures[scenario]}")
                finally:
                    run.stop()
            results[system.name] = figures
    finally:
        upstream.stop()
        redis_server.cleanup()
        if rabbit is not None:
            rabbit[0].cleanup()
    out = (
        args.out
        or REPO_ROOT / "bench" / "results" / f"budget-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["python -m bench.budget", *sys.argv[1:]]),
                "rate": args.rate,
                "broker": args.broker,
                "results": results,
            },
            indent=2,
        )
    )
    print(json.dumps(results, indent=2))
    log(f"figures in {out}; worker logs in {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
