"""The scenarios, each run against one live worker with the same sandbox and Redis.

Every scenario starts from empty results (db 0) and backend (db 2) and a reset sandbox
request log, so each job really reaches the upstream unless the worker itself avoids it
(which is what the hot-duplicates scenario measures). The broker database (db 1) is
never flushed under a running worker: it holds the queue bindings.

Times are wall-clock seconds (`time.time()`) of this process: enqueue times, result
writes seen through keyspace notifications, and the `date_done` the worker puts in the
result backend, which is on the same host clock.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from celery import Celery

from apis import PokeAPI
from apis.budget import SLOW, budget_keys
from bench.harness import KeyWatcher, ProcessTree, SampledWorker, SandboxProcess
from bench.senders import sender
from bench.systems import CATALOG_TASK, System

Figures = dict[str, Any]
TERMINAL = frozenset({"SUCCESS", "FAILURE"})
FAILURES_STREAM = "events:failures"


@dataclass(frozen=True)
class Plan:
    """How big each scenario is; `--quick` shrinks everything to a smoke run."""

    quick: bool
    jobs: int
    latency_seconds: float
    hot_jobs: int
    hot_names: int
    faulty_jobs: int
    hang_probability: float
    status_probability: float = 0.1
    catalog_size: int | None = None  # None: the whole index (POKEMON_CATALOG=*)
    changed_share: float = 0.1  # records the upstream changes before the last refresh
    zipf_exponent: float = 1.1
    seed: int = 11

    @classmethod
    def full(cls, jobs: int) -> Plan:
        return cls(
            quick=False,
            jobs=jobs,
            latency_seconds=12.0,
            hot_jobs=800,
            hot_names=50,
            faulty_jobs=min(jobs, 400),
            hang_probability=0.01,
        )

    @classmethod
    def smoke(cls, jobs: int) -> Plan:
        # Hangs are left out: one hang costs the client's 10 s read timeout.
        return cls(
            quick=True,
            jobs=jobs,
            latency_seconds=1.5,
            hot_jobs=jobs,
            hot_names=20,
            faulty_jobs=min(jobs, 60),
            hang_probability=0.0,
            catalog_size=jobs,
        )


@dataclass
class Context:
    """Everything a scenario touches, for one system under test."""

    system: System
    plan: Plan
    worker: SampledWorker
    sandbox: SandboxProcess
    redis_tree: ProcessTree
    results: redis.Redis  # db 0: the results contract
    backend: redis.Redis  # db 2: Celery's result backend
    producer: Celery
    watcher: KeyWatcher
    names: Sequence[str]  # the sandbox's whole index, in index order
    broker_url: str  # where the Dramatiq broker and the probe's list live (db 1)


@dataclass(frozen=True)
class Sent:
    task_id: str
    name: str
    at: float


# -- helpers ----------------------------------------------------------------------------


def reset(ctx: Context) -> None:
    """Empty results and backend, clear faults and the upstream's request log."""
    ctx.results.flushdb()
    ctx.backend.flushdb()
    ctx.sandbox.reset()
    ctx.watcher.clear()


def send(
    ctx: Context, names: Sequence[str], *, rate: float | None = None, waits: bool = False
) -> list[Sent]:
    """Enqueue one fetch job per name, as fast as possible or at a fixed rate; `waits`:
    the scenario reads each job's state from the result backend (stored only then)."""
    sent: list[Sent] = []
    start = time.monotonic()
    with sender(ctx.system, ctx.producer, ctx.broker_url, waits=waits) as enqueue:
        for index, name in enumerate(names):
            if rate is not None:
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            at = time.time()
            sent.append(Sent(enqueue(name), name, at))
    return sent


def wait_stored(ctx: Context, keys: Sequence[str], timeout: float) -> tuple[dict[str, float], bool]:
    """When each key was first written; (partial result, True) after `timeout`.

    Keyspace notifications give the times; once a second the keys are also checked
    directly, so a lost notification cannot hang the run (its time is then the check's).
    """
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 1.0
    late: dict[str, float] = {}
    while True:
        seen = ctx.watcher.seen()
        seen.update({key: at for key, at in late.items() if key not in seen})
        missing = [key for key in keys if key not in seen]
        if not missing:
            return {key: seen[key] for key in keys}, False
        if time.monotonic() >= next_check:
            pipe = ctx.results.pipeline(transaction=False)
            for key in missing:
                pipe.exists(key)
            checked = time.time()
            for key, present in zip(missing, pipe.execute(), strict=True):
                if present:
                    late.setdefault(key, checked)
            next_check = time.monotonic() + 1.0
        if time.monotonic() > deadline:
            return {key: seen[key] for key in keys if key in seen}, True
        time.sleep(0.02)


def wait_done(
    ctx: Context, task_ids: Sequence[str], timeout: float
) -> tuple[dict[str, tuple[str, float]], bool]:
    """Final state and `date_done` of each job from the result backend."""
    deadline = time.monotonic() + timeout
    done: dict[str, tuple[str, float]] = {}
    while True:
        pending = [task_id for task_id in task_ids if task_id not in done]
        for offset in range(0, len(pending), 500):
            chunk = pending[offset : offset + 500]
            values = ctx.backend.mget([f"celery-task-meta-{task_id}" for task_id in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw is None:
                    continue
                meta = orjson.loads(raw)
                if meta.get("status") in TERMINAL and meta.get("date_done"):
                    at = datetime.fromisoformat(meta["date_done"]).timestamp()
                    done[task_id] = (meta["status"], at)
        if len(done) == len(task_ids):
            return done, False
        if time.monotonic() > deadline:
            return done, True
        time.sleep(0.1)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_figures(latencies_s: Sequence[float]) -> Figures:
    ms = [value * 1000 for value in latencies_s]
    return {
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms, default=0.0), 1),
    }


class Meter:
    """CPU of the worker, the upstream and Redis, and the worker's peak memory, over a span."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        if ctx.worker.sampler is not None:
            ctx.worker.sampler.reset_peak()
            ctx.worker.sampler.resume()
        self.worker_cpu, self.worker_system_cpu = ctx.worker.cpu_split()
        self.sandbox_cpu = ctx.sandbox.cpu_seconds()
        self.redis_cpu = ctx.redis_tree.cpu_seconds()
        self.driver_cpu = time.process_time()

    def finish(self, jobs: int) -> Figures:
        ctx, per_job = self.ctx, 1000 / max(jobs, 1)
        rss, pss = ctx.worker.sampler.peak() if ctx.worker.sampler is not None else (0, 0)
        largest = ctx.worker.sampler.peak_largest() if ctx.worker.sampler is not None else 0
        if ctx.worker.sampler is not None:
            ctx.worker.sampler.pause()
        worker_cpu, worker_system_cpu = ctx.worker.cpu_split()
        return {
            "worker_cpu_ms_per_job": round((worker_cpu - self.worker_cpu) * per_job, 3),
            # Of it, the kernel's: syscalls, thread wake-ups, page faults.
            "worker_system_cpu_ms_per_job": round(
                (worker_system_cpu - self.worker_system_cpu) * per_job, 3
            ),
            "upstream_cpu_ms_per_job": round(
                (ctx.sandbox.cpu_seconds() - self.sandbox_cpu) * per_job, 3
            ),
            "redis_cpu_ms_per_job": round(
                (ctx.redis_tree.cpu_seconds() - self.redis_cpu) * per_job, 3
            ),
            # This process: enqueueing, watching keys, sampling memory.
            "driver_cpu_ms_per_job": round((time.process_time() - self.driver_cpu) * per_job, 3),
            "peak_rss_mib": round(rss / 2**20, 1),
            "peak_pss_mib": round(pss / 2**20, 1),
            "peak_rss_mib_largest_process": round(largest / 2**20, 1),
        }


def median_of_runs(runs: Sequence[Figures]) -> Figures:
    """One scenario's figures over repeated runs: the median of each number (so two
    figures may come from different runs), each run's throughput and CPU kept beside it."""
    merged: Figures = {}
    for key, value in runs[0].items():
        values = [run.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(runs):
            middle = statistics.median(numbers)
            merged[key] = round(middle, 3) if isinstance(middle, float) else middle
        else:
            merged[key] = value if not isinstance(value, bool) else any(values)
    merged["runs"] = len(runs)
    for key in ("jobs_per_s", "worker_cpu_ms_per_job"):
        merged[f"{key}_each_run"] = " / ".join(f"{run.get(key, 0):g}" for run in runs)
    return merged


def _rate(count: int, start: float, end: float) -> float:
    return round(count / (end - start), 2) if end > start else 0.0


# -- scenarios --------------------------------------------------------------------------


WARM_UP_JOBS = 256
#: The project's budget state of the bench's upstream (no key prefix in the bench).
BUDGET_STATE = budget_keys("", PokeAPI.service)[0]
#: Warm-up passes at most while the budget is still in its slow start.
WARM_UP_PASSES = 12


def warm_up(ctx: Context) -> Figures:
    """Jobs before the measured rounds, not measured: a worker makes its threads, its
    connections and its caches on its first work. Without this, each system's first
    cold run carried that start-up cost and the later ones did not (the project, with
    the most threads to start, lost ~15% of its first run to it).

    The project also paces an upstream it knows nothing of (the budget's slow start,
    apis/budget.py): 20 calls/s, doubling every 3 s while asked for. That is paid once
    per upstream per day of silence, not per job, so the warm-up goes on, one pass of
    the same names after another, until the budget has left its slow start: the rounds
    then measure what every later job costs. A system without a budget (its state key
    is never written) warms up in one pass, and so does a smoke run (`--quick`), which
    measures nothing.
    """
    names = list(ctx.names[: min(WARM_UP_JOBS, ctx.plan.jobs, len(ctx.names))])
    keys = [f"pokemon:{name}" for name in names]
    passes = stored_total = 0
    timed_out = False
    while True:
        reset(ctx)
        send(ctx, names)
        stored, timed_out = wait_stored(ctx, keys, timeout=120.0)
        passes += 1
        stored_total += len(stored)
        pacing = budget_phase(ctx.results) == SLOW
        if timed_out or ctx.plan.quick or passes >= WARM_UP_PASSES or not pacing:
            break
    return {
        "jobs": len(names) * passes,
        "stored": stored_total,
        "passes": passes,
        "timed_out": timed_out,
    }


def budget_phase(results: redis.Redis) -> str | None:
    """The phase of the project's budget of the bench's upstream (`SLOW` while its slow
    start paces it), as the results Redis holds it; None before its first call, or for
    a system without a budget."""
    phase = results.hget(BUDGET_STATE, "phase")
    return phase.decode() if isinstance(phase, bytes) else phase


def cold(ctx: Context) -> Figures:
    """Distinct names, each stored for the first time: peak throughput and its cost."""
    reset(ctx)
    names = list(ctx.names[: min(ctx.plan.jobs, len(ctx.names))])
    keys = [f"pokemon:{name}" for name in names]
    meter = Meter(ctx)
    sent = send(ctx, names)
    stored, timed_out = wait_stored(ctx, keys, timeout=max(120.0, len(names) / 4))
    figures = meter.finish(len(names))
    end = max(stored.values(), default=sent[-1].at)
    calls = ctx.sandbox.calls()
    return {
        "jobs_requested": ctx.plan.jobs,
        "jobs": len(names),
        "stored": len(stored),
        "seconds": round(end - sent[0].at, 3),
        "enqueue_seconds": round(sent[-1].at - sent[0].at, 3),
        "jobs_per_s": _rate(len(stored), sent[0].at, end),
        "upstream_calls_per_job": round(calls.get("pokemon", 0) / len(names), 3),
        **figures,
        "timed_out": timed_out,
    }


def latency(ctx: Context, rate: float) -> Figures:
    """Enqueue→stored latency at a fixed offered rate (half the system's own peak)."""
    reset(ctx)
    count = max(20, min(len(ctx.names), round(rate * ctx.plan.latency_seconds)))
    names = list(ctx.names[:count])
    meter = Meter(ctx)
    sent = send(ctx, names, rate=rate)
    keys = [f"pokemon:{name}" for name in names]
    stored, timed_out = wait_stored(ctx, keys, timeout=max(60.0, count / 4))
    figures = meter.finish(count)
    latencies = [
        stored[f"pokemon:{job.name}"] - job.at for job in sent if f"pokemon:{job.name}" in stored
    ]
    return {
        "offered_per_s": round(rate, 2),
        "achieved_offered_per_s": _rate(count - 1, sent[0].at, sent[-1].at),
        "jobs": count,
        "stored": len(stored),
        **latency_figures(latencies),
        **figures,
        "timed_out": timed_out,
    }


def hot(ctx: Context) -> Figures:
    """Many jobs over few names, Zipf-like, all inside the freshness window."""
    reset(ctx)
    plan = ctx.plan
    pool = list(ctx.names[: plan.hot_names])
    weights = [1 / rank**plan.zipf_exponent for rank in range(1, len(pool) + 1)]
    drawn = random.Random(plan.seed).choices(pool, weights, k=plan.hot_jobs)
    meter = Meter(ctx)
    sent = send(ctx, drawn, waits=True)
    done, timed_out = wait_done(ctx, [job.task_id for job in sent], timeout=180)
    figures = meter.finish(len(drawn))
    calls = ctx.sandbox.calls().get("pokemon", 0)
    distinct = len(set(drawn))
    end = max((at for _, at in done.values()), default=sent[-1].at)
    by_id = {job.task_id: job.at for job in sent}
    return {
        "jobs": len(drawn),
        "distinct_names": distinct,
        "succeeded": sum(1 for state, _ in done.values() if state == "SUCCESS"),
        "upstream_calls": calls,
        "calls_per_distinct_name": round(calls / distinct, 3),
        "jobs_per_s": _rate(len(done), sent[0].at, end),
        **latency_figures([at - by_id[task_id] for task_id, (_, at) in done.items()]),
        **figures,
        "timed_out": timed_out,
    }


def catalog(ctx: Context) -> Figures:
    """`refresh_catalog` over the index: the worker enqueues the fan-out itself."""
    reset(ctx)
    size = ctx.plan.catalog_size
    expected = list(ctx.names if size is None else ctx.names[:size])
    keys = [f"pokemon:{name}" for name in expected]
    meter = Meter(ctx)
    start = time.time()
    ctx.producer.send_task(CATALOG_TASK, queue=ctx.system.queue)
    stored, timed_out = wait_stored(ctx, keys, timeout=max(120.0, len(keys) / 4))
    figures = meter.finish(len(expected))
    end = max(stored.values(), default=start)
    calls = ctx.sandbox.calls()
    return {
        "names": len(expected),
        "stored": len(stored),
        "seconds": round(end - start, 3),
        "names_per_s": _rate(len(stored), start, end),
        "upstream_calls": calls.get("pokemon", 0) + calls.get("pokemon_list", 0),
        "index_page_calls": calls.get("pokemon_list", 0),
        "upstream_calls_per_name": round(
            (calls.get("pokemon", 0) + calls.get("pokemon_list", 0)) / len(expected), 3
        ),
        **figures,
        "timed_out": timed_out,
    }


def faulty(ctx: Context, rate: float) -> Figures:
    """10% 503s and 1% hangs: is every job stored or recorded, and at what cost?"""
    reset(ctx)
    plan = ctx.plan
    # Queued faults are tried in order: the rarer hang first, so each keeps its share.
    if plan.hang_probability > 0:
        ctx.sandbox.inject(
            {"route": "pokemon", "kind": "hang", "probability": plan.hang_probability}
        )
    ctx.sandbox.inject(
        {
            "route": "pokemon",
            "kind": "status",
            "status": 503,
            "probability": plan.status_probability,
        }
    )
    names = list(ctx.names[: plan.faulty_jobs])
    meter = Meter(ctx)
    sent = send(ctx, names, rate=rate, waits=True)
    done, timed_out = wait_done(ctx, [job.task_id for job in sent], timeout=240)
    figures = meter.finish(len(names))
    ctx.sandbox.admin("DELETE", "/faults")
    calls = ctx.sandbox.calls().get("pokemon", 0)
    pipe = ctx.results.pipeline(transaction=False)
    for name in names:
        pipe.exists(f"pokemon:{name}")
    stored = {name for name, present in zip(names, pipe.execute(), strict=True) if present}
    entries: list[tuple[str, dict[str, str]]] = ctx.results.xrange(FAILURES_STREAM, "-", "+")  # type: ignore[assignment]
    recorded = {fields.get("task_id", "") for _, fields in entries}
    accounted = sum(1 for job in sent if job.name in stored or job.task_id in recorded)
    by_id = {job.task_id: job.at for job in sent}
    return {
        "jobs": len(names),
        "offered_per_s": round(rate, 2),
        "stored_share": round(len(stored) / len(names), 4),
        "recorded_failure_share": round(len(recorded & set(by_id)) / len(names), 4),
        "accounted_share": round(accounted / len(names), 4),
        "lost_jobs": len(names) - accounted,
        "backend_failures": sum(1 for state, _ in done.values() if state == "FAILURE"),
        "upstream_calls_per_job": round(calls / len(names), 3),
        **latency_figures([at - by_id[task_id] for task_id, (_, at) in done.items()]),
        **figures,
        "timed_out": timed_out,
    }


# -- refresh: conditional requests over a stored catalog ----------------------------------

EVENTS_STREAM = "events:results"


def refresh(ctx: Context) -> Figures:
    """The whole catalog stored, then refreshed (FRESHNESS_MAX_AGE=0) twice: unchanged,
    then with `changed_share` of the records changed upstream.

    Three `refresh_catalog` passes over the same stored keys: the first is cold (it
    stores everything, and its upstream bytes are the cold refresh's), the second finds
    every record unchanged (a 304 each), the third finds a seeded random tenth changed.
    The worker must run with FRESHNESS_MAX_AGE=0, or the refreshes would be fresh hits.
    """
    reset(ctx)
    size = ctx.plan.catalog_size
    expected = list(ctx.names if size is None else ctx.names[:size])
    cold_pass = _catalog_pass(ctx, expected, set())
    ctx.sandbox.reset()
    unchanged = _catalog_pass(ctx, expected, set())
    ctx.sandbox.reset()  # also undoes record changes (none yet)
    count = max(1, round(len(expected) * ctx.plan.changed_share))
    changed_names = set(random.Random(ctx.plan.seed).sample(expected, count))
    for name in sorted(changed_names):
        ctx.sandbox.admin("POST", f"/records/pokemon/{name}")
    changed = _catalog_pass(ctx, expected, changed_names)
    return {
        "names": len(expected),
        "cold": cold_pass,
        "unchanged": unchanged,
        "changed": changed,
        "timed_out": any(part["timed_out"] for part in (cold_pass, unchanged, changed)),
    }


def _catalog_pass(ctx: Context, expected: Sequence[str], changed: set[str]) -> Figures:
    """One `refresh_catalog`, done when every name has its new `events:results` entry.

    The end is the Redis time in the last entry's id (the same host clock as `start`);
    which entries say `changed=1` is compared with the names the upstream changed.
    """
    last: list[tuple[str, dict[str, str]]] = ctx.results.xrevrange(EVENTS_STREAM, count=1)  # type: ignore[assignment]
    after = "(" + last[0][0] if last else "-"
    meter = Meter(ctx)
    start = time.time()
    ctx.producer.send_task(CATALOG_TASK, queue=ctx.system.queue)
    deadline = time.monotonic() + max(120.0, len(expected) / 4)
    entries: list[tuple[str, dict[str, str]]] = []
    while True:
        entries += ctx.results.xrange(EVENTS_STREAM, min=after, max="+")  # type: ignore[arg-type]
        if entries:
            after = f"({entries[-1][0]}"
        if len({fields["id"] for _, fields in entries}) >= len(expected):
            timed_out = False
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(0.02)
    figures = meter.finish(len(expected))
    end = max((int(entry_id.split("-")[0]) / 1000 for entry_id, _ in entries), default=start)
    flagged = {fields["id"] for _, fields in entries if fields.get("changed") == "1"}
    revalidated = sum(1 for _, fields in entries if fields.get("revalidated") == "1")
    upstream = ctx.sandbox.admin("GET", "/requests")
    calls = upstream["counts"]
    return {
        "names_per_s": _rate(len(entries), start, end),
        "seconds": round(end - start, 3),
        "entries": len(entries),
        "revalidated": revalidated,
        "changed_flags": len(flagged),
        "changed_upstream": len(changed),
        "flags_match_changes": flagged == changed if changed or revalidated else None,
        "upstream_calls": calls.get("pokemon", 0) + calls.get("pokemon_list", 0),
        "not_modified": upstream.get("not_modified", 0),
        "upstream_body_bytes": upstream.get("bytes_sent", 0),
        **figures,
        "timed_out": timed_out,
    }
