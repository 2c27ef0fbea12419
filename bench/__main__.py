"""`python -m bench [--quick] [--jobs N] [--repeat N] [--latency S] [--out PATH]`.

Starts a private redis-server, the sandbox upstream (its own process, so its CPU is
not the worker's) and, one after the other, each system's worker; runs the scenarios
against each with the same upstream and Redis; prints a Markdown table per scenario with
every project figure divided by each baseline's, and saves all figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report, scenarios
from bench.harness import (
    REPO_ROOT,
    KeyWatcher,
    PrivateRedis,
    ProcessTree,
    SandboxProcess,
    WorkerProcess,
    clean_environment,
    free_port,
    producer_app,
)
from bench.profile import Profiler
from bench.systems import ALL_SYSTEMS, PROJECT, SYSTEMS, TUNED, TUTORIAL, System, settings_names

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: few jobs, one baseline")
    parser.add_argument(
        "--jobs", type=int, default=None, help="cold jobs (default 2000, capped at the index)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.05, help="upstream latency in seconds (default 0.05)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument(
        "--systems",
        default=None,
        help="comma-separated subset of: " + ", ".join(ALL_SYSTEMS),
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="cold runs per system, their median reported (default 3, 1 with --quick)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the project's worker with py-spy during the cold scenario only",
    )
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 100 if args.quick else 2000
    if args.repeat is None:
        args.repeat = 1 if args.quick or args.profile else 3
    if args.jobs < 1 or args.latency < 0 or args.repeat < 1:
        parser.error("--jobs and --repeat must be positive and --latency not negative")
    return args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return ""
    return out.stdout.strip()


class Bench:
    """The shared processes of one run, and the loop over systems and scenarios."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = (
            scenarios.Plan.smoke(args.jobs) if args.quick else scenarios.Plan.full(args.jobs)
        )
        self.log_dir = Path(tempfile.mkdtemp(prefix="apiworker-bench-"))
        self.redis = PrivateRedis()
        self.sandbox = SandboxProcess(args.latency)

    def systems(self) -> list[System]:
        if self.args.systems:
            return [ALL_SYSTEMS[name.strip()] for name in self.args.systems.split(",")]
        if self.args.profile:
            return [SYSTEMS[PROJECT]]
        names = [PROJECT, TUNED] if self.args.quick else [PROJECT, TUNED, TUTORIAL]
        return [SYSTEMS[name] for name in names]

    def run(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
        self.redis.start()
        self.sandbox.start()  # for the index only; each system gets a fresh one
        results: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        watcher = KeyWatcher(self.redis.client(0)).start()
        producer = producer_app(self.redis.url(1), self.redis.url(2))
        try:
            index = self.sandbox.get("/pokemon?limit=100000")["results"]
            names = [entry["name"] for entry in index]
            self.sandbox.stop()
            meta = self._meta(len(names))
            log(f"{len(names)} index names; logs in {self.log_dir}")
            for system in self.systems():
                try:
                    results[system.name] = self._run_system(system, names, watcher, producer)
                except Exception as exc:  # one system failing must not lose the others
                    errors.append(f"{system.name}: {exc}")
                    log(f"{system.name} failed:\n{traceback.format_exc()}")
        finally:
            producer.close()
            watcher.stop()
            self.sandbox.stop()
            self.redis.stop()
        meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["loadavg_after"] = os.getloadavg()
        return meta, results, errors

    def _meta(self, index_size: int) -> dict[str, Any]:
        return {
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "nproc": len(os.sched_getaffinity(0)),
            "loadavg_before": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "revision": _git_revision(),
            "upstream_latency_s": self.args.latency,
            "cold_repeat": self.args.repeat,
            "index_size": index_size,
            "plan": self.plan.__dict__,
            "systems": {system.name: system.description for system in self.systems()},
        }

    def _environment(self, names: Sequence[str]) -> dict[str, str]:
        """Defaults everywhere; only where Redis and the upstream are (and the catalog)."""
        size = self.plan.catalog_size
        return {
            **clean_environment(settings_names()),
            "REDIS_URL": self.redis.url(0),
            "CELERY_BROKER_URL": self.redis.url(1),
            "CELERY_RESULT_BACKEND": self.redis.url(2),
            "POKEAPI_BASE_URL": self.sandbox.pokeapi_url,
            # Another process on the host may hold the default 9808.
            "METRICS_PORT": str(free_port()),
            "POKEMON_CATALOG": "*" if size is None else ",".join(names[:size]),
        }

    def _run_system(
        self, system: System, names: list[str], watcher: KeyWatcher, producer: Any
    ) -> dict[str, Any]:
        self.redis.client(0).flushall()
        # A fresh upstream per system: the sandbox caches built and gzipped bodies, and a
        # system must not get cheaper answers because another warmed the cache before it.
        self.sandbox = SandboxProcess(self.args.latency)
        worker: WorkerProcess | None = None
        try:
            self.sandbox.start()
            started = time.monotonic()
            worker = self._start_worker(system, names, producer)
            process: dict[str, Any] = {
                "startup_s": round(time.monotonic() - started, 2),
                "loadavg_at_start": os.getloadavg(),
            }
            time.sleep(0.5)  # let the worker settle (mingle, first polls) before measuring
            assert worker.sampler is not None
            rss, pss = worker.sampler.peak()
            process["idle_rss_mib"] = round(rss / 2**20, 1)
            process["idle_pss_mib"] = round(pss / 2**20, 1)
            ctx = scenarios.Context(
                system=system,
                plan=self.plan,
                worker=worker,
                sandbox=self.sandbox,
                redis_tree=ProcessTree(self.redis.process.pid if self.redis.process else 0),
                results=self.redis.client(0),
                backend=self.redis.client(2),
                producer=producer,
                watcher=watcher,
                names=names,
            )
            figures = {"process": process, **self._scenarios(ctx)}
            if system.name == PROJECT and not self.args.profile:
                # Refreshing a stored catalog needs every job to ask the upstream.
                worker.stop()
                worker = self._start_worker(
                    system, names, producer, label="refresh", extra={"FRESHNESS_MAX_AGE": "0"}
                )
                again = dataclasses.replace(ctx, worker=worker)
                figures["refresh"] = self._scenario(
                    again, "refresh", lambda: scenarios.refresh(again)
                )
            return figures
        finally:
            if worker is not None:
                worker.stop()
            self.sandbox.stop()

    def _start_worker(
        self,
        system: System,
        names: list[str],
        producer: Any,
        *,
        label: str = "",
        extra: dict[str, str] | None = None,
    ) -> WorkerProcess:
        env = {**self._environment(names), **system.extra_env, **(extra or {})}
        worker = WorkerProcess(
            system.module,
            env,
            system.args,
            self.log_dir,
            label=f"{system.name}-{label}" if label else system.name,
            command=system.command,
        )
        command = [f"{key}={value}" for key, value in (extra or {}).items()]
        command += worker.command[1:]
        log(f"{system.name}: starting `{' '.join(command)}`")
        worker.start(producer)
        return worker

    def _scenarios(self, ctx: scenarios.Context) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.args.profile:
            profiler = Profiler(ctx.worker, self.log_dir)
            with profiler:
                out["cold"] = self._scenario(ctx, "cold", lambda: scenarios.cold(ctx))
            out["profile"] = profiler.summary(out["cold"])
            return out
        # The machine is noisy: the cold figures are the median of --repeat runs.
        runs = [
            self._scenario(ctx, "cold", lambda: scenarios.cold(ctx))
            for _ in range(self.args.repeat)
        ]
        out["cold"] = scenarios.median_of_runs(runs)
        # Latency and faults are measured below saturation: at half this system's peak.
        rate = max(1.0, out["cold"]["jobs_per_s"] / 2)
        out["latency"] = self._scenario(ctx, "latency", lambda: scenarios.latency(ctx, rate))
        out["hot"] = self._scenario(ctx, "hot", lambda: scenarios.hot(ctx))
        out["catalog"] = self._scenario(ctx, "catalog", lambda: scenarios.catalog(ctx))
        out["faulty"] = self._scenario(ctx, "faulty", lambda: scenarios.faulty(ctx, rate))
        return out

    def _scenario(self, ctx: scenarios.Context, name: str, run: Any) -> dict[str, Any]:
        started = time.monotonic()
        figures: dict[str, Any] = run()
        parts = [figures, *(figures[k] for k in ("unchanged", "changed") if k in figures)]
        summary = ", ".join(
            f"{key}={part[key]}"
            for part in parts
            for key in ("jobs_per_s", "names_per_s", "p99_ms", "worker_cpu_ms_per_job")
            if key in part
        )
        log(f"{ctx.system.name}: {name} done in {time.monotonic() - started:.1f}s ({summary})")
        return figures


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Unwind like Ctrl-C, so every `finally` stops the processes this run started."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    bench = Bench(args)
    started = time.monotonic()
    meta, results, errors = bench.run()
    meta["wall_seconds"] = round(time.monotonic() - started, 1)
    out = args.out or RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write(out, meta, results)
    print()
    print(report.render(results))
    for name, figures in results.items():
        if "profile" in figures:
            print()
            print(report.profile_table(results, name))
    print()
    print(
        f"nproc={meta['nproc']} latency={args.latency}s wall={meta['wall_seconds']}s "
        f"load {meta['loadavg_before'][0]:.2f}→{meta['loadavg_after'][0]:.2f}; figures in {out}"
    )
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors or not results else 0


if __name__ == "__main__":
    raise SystemExit(main())
