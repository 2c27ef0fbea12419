"""`python -m bench.memory [--jobs 20000]`: does one worker's memory level off?

One `python -m worker` process (threads pool, defaults) takes N jobs over the
1351 index names in turn, freshness off and each slice's stored results deleted before
it is sent (a stored result would be revalidated: a 304 without a body), so that every
job fetches, decodes and stores a real-sized record. The worker's resident memory is
read after every slice of jobs, and its peak during the slice (sampled every 0.2 s: the
bodies in flight included); a leak shows as a curve that keeps climbing, a healthy worker
as one that flattens once its pools, caches and allocator arenas are warm.

By default the worker joins a fleet that already knows the upstream: a first worker
process runs until the fleet's budget has left its slow start (apis/budget.py), then
stops, and the measured one starts with the budget's state in Redis, as every worker
after a fleet's first day does. `--fresh-fleet` measures the first worker of a fleet
that has never called the upstream instead: its first jobs are paced while the slow
start ramps, and some are deferred. `--upstream-limit RATE` makes the sandbox answer 429
(`Retry-After: 1`) above RATE calls a second once the budget is learnt, so the measured
worker defers jobs on the upstream's word, as a worker behind a rate-limited upstream
does. Each slice's line counts the jobs retried or deferred so far (the worker's
`apiworker_task_retries_total`): a retry once left a worker ~14 MiB higher for life
(docs/performance.md, "One copy of the code positions"). `--concurrency N` sets the
workers' WORKER_CONCURRENCY (the learning one's too).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from apis.budget import SLOW
from bench.harness import (
    SampledWorker,
    SandboxProcess,
    clean_environment,
    counter_total,
    notifying_redis,
)
from bench.scenarios import budget_phase
from bench.systems import FETCH_TASK, settings_names
from ops.processes.ports import free_port
from ops.processes.waits import wait_until
from ops.producer import producer_app
from results.keys import Keys
from tasks.pokemon import KIND as POKEMON

RESULTS = Path(__file__).parent / "results"
INDEX = Path(__file__).parents[1] / "sandbox" / "data" / "pokemon-index.json"


#: Jobs the learning worker may take at most before the budget opens.
LEARNING_JOBS_MAX = 20_000


def _stored_at_least(results: redis.Redis, total: int) -> bool:
    return bool(results.xlen("events:results") >= total)


def _slice(names: list[str], start: int, count: int) -> list[str]:
    return [names[(start + offset) % len(names)] for offset in range(count)]


def _forget(results: redis.Redis, names: list[str]) -> None:
    """Delete the stored results of `names`, so their next jobs fetch whole bodies.

    With freshness off a stored result is still revalidated (`If-None-Match`), and the
    sandbox answers 304 without a body: a name's second job would measure no body at all.
    """
    keys = Keys()
    results.delete(*(keys.result(POKEMON, name) for name in names))


def _send(producer: Any, names: list[str]) -> None:
    with producer.producer_or_acquire() as publisher:
        for name in names:
            producer.send_task(
                FETCH_TASK,
                args=[name],
                queue="pokeapi",
                producer=publisher,
                ignore_result=True,  # nobody waits: as the bench's cold senders
            )


def _learn_budget(
    env: dict[str, str], producer: Any, results: redis.Redis, names: list[str], log_dir: Path
) -> int:
    """A first worker process, run until the fleet's budget of the upstream has left its
    slow start, then stopped; returns how many jobs it stored."""
    learner = SampledWorker(
        "worker", env, [], log_dir, label="learner", command=("-m", "worker", "--loglevel=WARNING")
    )
    sent = 0
    try:
        learner.start(producer)
        while budget_phase(results) in (None, SLOW) and sent < LEARNING_JOBS_MAX:
            _send(producer, _slice(names, sent, 256))
            sent += 256
            wait_until(
                functools.partial(_stored_at_least, results, sent),
                timeout=300,
                what=f"{sent} stored results (learning the budget)",
                interval=0.2,
            )
    finally:
        learner.stop()
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--slice", type=int, default=1_000, help="jobs between readings")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--fresh-fleet",
        action="store_true",
        help="the first worker of a fleet that has never called the upstream (slow start)",
    )
    parser.add_argument(
        "--upstream-limit",
        type=float,
        default=None,
        metavar="RATE",
        help="the upstream answers 429 above RATE calls/s once the budget is learnt",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="WORKER_CONCURRENCY of the measured worker (and of the one learning the "
        "budget before it); default: the setting's default",
    )
    args = parser.parse_args()

    names = [entry["name"] for entry in json.loads(INDEX.read_text())["results"]]
    redis_server = notifying_redis().start()
    sandbox = SandboxProcess(0.0).start()
    log_dir = Path(redis_server.dir)
    env = {
        **clean_environment(settings_names()),
        "REDIS_URL": redis_server.url_for(0),
        "CELERY_BROKER_URL": redis_server.url_for(1),
        "CELERY_RESULT_BACKEND": redis_server.url_for(2),
        "POKEAPI_BASE_URL": sandbox.pokeapi_url,
        "METRICS_PORT": str(free_port()),
        "FRESHNESS_MAX_AGE": "0",
        "RESULT_EXPIRES": "60",
    }
    if args.concurrency is not None:
        env["WORKER_CONCURRENCY"] = str(args.concurrency)
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = SampledWorker(
        "worker", env, [], log_dir, label="memory", command=("-m", "worker", "--loglevel=WARNING")
    )
    results = redis_server.client(0)
    curve: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        learnt = 0 if args.fresh_fleet else _learn_budget(env, producer, results, names, log_dir)
        fleet = "fresh fleet" if args.fresh_fleet else f"budget learnt first ({learnt} jobs)"
        if args.upstream_limit is not None:
            # The sandbox's PokeAPI answers 429 with `Retry-After: 1` above the rate.
            sandbox.admin("PUT", "/budget/pokemon", {"rate": args.upstream_limit, "retry_after": 1})
            fleet += f", upstream limited to {args.upstream_limit:g} calls/s"
        print(f"one worker process, {fleet}", flush=True)
        metrics_url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
        worker.start(producer)
        assert worker.tree is not None
        assert worker.sampler is not None
        sent = 0
        while sent < args.jobs:
            batch = min(args.slice, args.jobs - sent)
            worker.sampler.reset_peak()
            chosen = _slice(names, learnt + sent, batch)
            _forget(results, chosen)
            _send(producer, chosen)
            sent += batch
            wait_until(
                functools.partial(_stored_at_least, results, learnt + sent),
                timeout=300,
                what=f"{sent} stored results",
                interval=0.2,
            )
            rss, _ = worker.tree.memory()
            peak, _ = worker.sampler.peak()
            point = {
                "jobs": sent,
                "rss_mib": round(rss / 2**20, 1),
                "peak_rss_mib": round(peak / 2**20, 1),
                "retried": counter_total(metrics_url, "apiworker_task_retries"),
            }
            curve.append(point)
            print(
                f"{point['jobs']:>7} jobs  RSS {point['rss_mib']:>7.1f} MiB"
                f"  peak during the slice {point['peak_rss_mib']:>7.1f} MiB"
                f"  retried or deferred {point['retried']:>5}",
                flush=True,
            )
    finally:
        worker.stop()
        producer.close()
        sandbox.stop()
        redis_server.cleanup()
    out = args.out or RESULTS / f"memory-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps(
            {
                "jobs": args.jobs,
                "fresh_fleet": args.fresh_fleet,
                "upstream_limit": args.upstream_limit,
                "wall_s": round(time.monotonic() - started, 1),
                "curve": curve,
            },
            indent=2,
        )
    )
    print(f"curve saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
