"""`python -m bench [--quick] [--jobs N] [--repeat N] [--latency S] [--out PATH]`.

Starts a private redis-server, the sandbox upstream (its own process, so its CPU is
not the worker's) and, one after the other, each system's worker; runs the scenarios
against each with the same upstream and Redis; then restarts each system against an
upstream serving ~4 KB bodies with no latency for the small-body cold case; prints a
Markdown table per scenario with every project figure divided by each baseline's, and
saves all figures as JSON.
"""

from __future__ import annotations

import argparse
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
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report, scenarios
from bench.harness import (
    REPO_ROOT,
    KeyWatcher,
    ProcessTree,
    SampledWorker,
    SandboxProcess,
    clean_environment,
    notifying_redis,
)
from bench.profile import Profiler
from bench.senders import sender
from bench.systems import (
    ALL_SYSTEMS,
    CELERY,
    DRAMATIQ,
    DRAMATIQ_PROTOCOL,
    EVERY_SCENARIO,
    FLOWER,
    PROBE,
    PROJECT,
    SYSTEMS,
    TUNED,
    TUTORIAL,
    System,
    project_at,
    settings_names,
)
from ops.processes.ports import free_port
from ops.producer import producer_app

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
        "--against",
        metavar="REV[,REV...]",
        default=None,
        help="also run the project at each git revision REV (from a copy of its files), "
        "right after the project (and after project-flower, with Flower, when it runs), "
        "to measure changes side by side",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated subset of: " + ", ".join(EVERY_SCENARIO) + " (cold always runs)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the project's worker (or the first of --systems) with py-spy during "
        "the cold scenario only (with --scenarios small: during the small-body case instead)",
    )
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 100 if args.quick else 2000
    if args.repeat is None:
        args.repeat = 1 if args.quick or args.profile else 3
    if args.jobs < 1 or args.latency < 0 or args.repeat < 1:
        parser.error("--jobs and --repeat must be positive and --latency not negative")
    if args.scenarios is None:
        args.scenarios = ",".join(EVERY_SCENARIO)
        args.profile_small = False
    else:
        args.profile_small = args.profile and "small" in args.scenarios.split(",")
    args.scenarios = {name.strip() for name in args.scenarios.split(",")} | {"cold"}
    if not args.scenarios <= set(EVERY_SCENARIO):
        parser.error("--scenarios: one of " + ", ".join(EVERY_SCENARIO))
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
        self.redis = notifying_redis()
        self.errors: list[str] = []
        self._against: dict[str, System] = {}

    def systems(self) -> list[System]:
        if self.args.systems:
            chosen = [ALL_SYSTEMS[name.strip()] for name in self.args.systems.split(",")]
        elif self.args.profile:
            return [SYSTEMS[PROJECT]]
        else:
            names = [PROJECT, TUNED, DRAMATIQ, PROBE]
            if not self.args.quick:
                names.insert(2, TUTORIAL)
            chosen = [SYSTEMS[name] for name in names]
        if self.args.against:
            revisions = [rev.strip() for rev in self.args.against.split(",") if rev.strip()]
            chosen[1:1] = [self._project_at(revision) for revision in revisions]
            # With Flower in the run, the revisions with Flower too, right after it.
            flower = next((i for i, s in enumerate(chosen) if s.name == FLOWER), None)
            if flower is not None:
                at = [self._project_at(revision, FLOWER) for revision in revisions]
                chosen[flower + 1 : flower + 1] = at
        return chosen

    def _project_at(self, revision: str, base: str = PROJECT) -> System:
        """A copy of the project's files at `revision` (git archive), run as a system."""
        key = f"{base}@{revision}"
        if key not in self._against:
            tree = self.log_dir / f"tree-{revision}"
            if not tree.exists():
                tree.mkdir()
                archive = subprocess.run(
                    ["git", "archive", "--format=tar", revision],
                    cwd=REPO_ROOT,
                    capture_output=True,
                    check=True,
                )
                subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            self._against[key] = project_at(revision, str(tree), base)
        return self._against[key]

    def run(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
        self.redis.start()
        index_sandbox = SandboxProcess(self.args.latency, prewarm=False)
        results: dict[str, dict[str, Any]] = {}
        watcher = KeyWatcher(self.redis.client(0)).start()
        try:
            index_sandbox.start()
            index = index_sandbox.get("/pokemon?limit=100000")["results"]
            names = [entry["name"] for entry in index]
            index_sandbox.stop()
            meta = self._meta(len(names))
            log(f"{len(names)} index names; logs in {self.log_dir}")
            systems = self.systems()
            results.update({system.name: {} for system in systems})
            if self._profile_small():
                self._stage(systems, names, watcher, results, small=True)
            else:
                self._stage(systems, names, watcher, results, small=False)
                small = [s for s in systems if self._small(s) and "cold" in results[s.name]]
                if small:
                    self._stage(small, names, watcher, results, small=True)
        finally:
            watcher.stop()
            index_sandbox.stop()
            self.redis.cleanup()
        meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["loadavg_after"] = os.getloadavg()
        return meta, {name: figures for name, figures in results.items() if figures}, self.errors

    def _failed(self, system: System, exc: Exception) -> None:
        """One system failing must not lose the others' figures."""
        self.errors.append(f"{system.name}: {exc}")
        log(f"{system.name} failed:\n{traceback.format_exc()}")

    def _stage(
        self,
        systems: Sequence[System],
        names: list[str],
        watcher: KeyWatcher,
        results: dict[str, dict[str, Any]],
        *,
        small: bool,
    ) -> None:
        """Every system's worker up at once against one upstream, the cold runs in rounds.

        The machine is shared and its load drifts over minutes; running system A's three
        cold runs and only then B's would hand A and B different machines. Rounds (A B C,
        A B C, ...) spread the drift over all of them, and the medians compare like with
        like. Each system has its own broker database, so an idle worker never takes
        another's job; only the one under measurement gets work.
        """
        sandbox = SandboxProcess(
            0.0 if small else self.args.latency, small_bodies=small, prewarm=not self.args.quick
        )
        label = "small" if small else "cold"
        running: dict[str, scenarios.Context] = {}
        try:
            sandbox.start()
            for system in systems:
                try:
                    ctx, process = self._start(system, names, watcher, sandbox, small=small)
                except Exception as exc:
                    self._failed(system, exc)
                    continue
                running[system.name] = ctx
                results[system.name]["process_small" if small else "process"] = process
            if self.args.profile:
                # The first system chosen: the project unless --systems names another.
                first = systems[0].name
                if first in running:
                    self._profile(running[first], results[first], label)
                return
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in running}
            healthy = dict(running)  # a system that fails leaves the rounds, not `running`
            for name, ctx in list(healthy.items()):
                try:
                    self._scenario(ctx, f"{label} warm-up", partial(scenarios.warm_up, ctx))
                except Exception as exc:
                    self._failed(ctx.system, exc)
                    del healthy[name]
            for round_number in range(self.args.repeat):
                for name, ctx in list(healthy.items()):
                    if 0 < ctx.system.max_repeat <= round_number:
                        continue
                    try:
                        runs[name].append(self._scenario(ctx, label, partial(scenarios.cold, ctx)))
                    except Exception as exc:
                        self._failed(ctx.system, exc)
                        del healthy[name]
            for name in healthy:
                results[name][label] = scenarios.median_of_runs(runs[name])
            if not small:
                for name, ctx in healthy.items():
                    try:
                        results[name].update(self._others(ctx, results[name]["cold"]))
                    except Exception as exc:
                        self._failed(ctx.system, exc)
                if PROJECT in healthy and "refresh" in self._wanted(healthy[PROJECT].system):
                    self._refresh(healthy[PROJECT], names, watcher, sandbox, results)
        finally:
            for ctx in running.values():
                ctx.worker.stop()
                ctx.producer.close()
            sandbox.stop()

    def _refresh(
        self,
        ctx: scenarios.Context,
        names: list[str],
        watcher: KeyWatcher,
        sandbox: SandboxProcess,
        results: dict[str, dict[str, Any]],
    ) -> None:
        """Refreshing a stored catalog needs every job to ask the upstream: the project's
        worker again, with FRESHNESS_MAX_AGE=0 (the baselines have no conditional path)."""
        ctx.worker.stop()
        try:
            again, _ = self._start(
                ctx.system, names, watcher, sandbox, small=False,
                extra={"FRESHNESS_MAX_AGE": "0"}, label="refresh",
            )  # fmt: skip
        except Exception as exc:
            self._failed(ctx.system, exc)
            return
        try:
            results[PROJECT]["refresh"] = self._scenario(
                again, "refresh", partial(scenarios.refresh, again)
            )
        except Exception as exc:
            self._failed(ctx.system, exc)
        finally:
            again.worker.stop()
            again.producer.close()

    def _start(
        self,
        system: System,
        names: list[str],
        watcher: KeyWatcher,
        sandbox: SandboxProcess,
        *,
        small: bool,
        extra: dict[str, str] | None = None,
        label: str = "",
    ) -> tuple[scenarios.Context, dict[str, Any]]:
        """Start one system's worker on a broker database of its own; wait until ready."""
        broker_db = self._broker_db(system, small, list(self.systems()))
        producer = producer_app(self.redis.url_for(broker_db), self.redis.url_for(2))
        env = {
            **self._environment(names, sandbox, broker_db),
            **system.extra_env,
            **(extra or {}),
        }
        worker = SampledWorker(
            system.module,
            env,
            system.args,
            self.log_dir,
            label=f"{system.name}-{label or ('small' if small else '')}".rstrip("-"),
            command=system.command,
            cwd=Path(system.cwd) if system.cwd else REPO_ROOT,
        )
        log(f"{system.name}: starting `{' '.join(worker.command[1:])}` (broker db {broker_db})")
        started = time.monotonic()
        try:
            worker.start(producer, ready=self._readiness(system, producer, names[-1], broker_db))
        except BaseException:
            worker.stop()
            producer.close()
            raise
        process: dict[str, Any] = {
            "startup_s": round(time.monotonic() - started, 2),
            "loadavg_at_start": os.getloadavg(),
        }
        time.sleep(0.5)  # let the worker settle (mingle, first polls) before measuring
        assert worker.sampler is not None
        rss, pss = worker.sampler.peak()
        process["idle_rss_mib"] = round(rss / 2**20, 1)
        process["idle_pss_mib"] = round(pss / 2**20, 1)
        process["idle_rss_mib_largest_process"] = round(worker.sampler.peak_largest() / 2**20, 1)
        worker.sampler.pause()  # sampled only while a scenario measures it
        ctx = scenarios.Context(
            system=system,
            plan=self.plan,
            worker=worker,
            sandbox=sandbox,
            redis_tree=ProcessTree(self.redis.process.pid if self.redis.process else 0),
            results=self.redis.client(0),
            backend=self.redis.client(2),
            producer=producer,
            watcher=watcher,
            names=names,
            broker_url=self.redis.url_for(broker_db),
        )
        return ctx, process

    def _broker_db(self, system: System, small: bool, systems: list[System]) -> int:
        """db 0 holds results and db 2 the result backend; brokers get 3, 4, 5, ..."""
        position = [one.name for one in systems].index(system.name)
        return 3 + 2 * position + int(small)

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

    def _environment(
        self, names: Sequence[str], sandbox: SandboxProcess, broker_db: int
    ) -> dict[str, str]:
        """Defaults everywhere; only where Redis and the upstream are (and the catalog)."""
        size = self.plan.catalog_size
        return {
            **clean_environment(settings_names()),
            "REDIS_URL": self.redis.url_for(0),
            "CELERY_BROKER_URL": self.redis.url_for(broker_db),
            "CELERY_RESULT_BACKEND": self.redis.url_for(2),
            # The Dramatiq baseline's broker and the probe's list, in the same database.
            "DRAMATIQ_BROKER_URL": self.redis.url_for(broker_db),
            "PROBE_QUEUE_URL": self.redis.url_for(broker_db),
            "POKEAPI_BASE_URL": sandbox.pokeapi_url,
            # Another process on the host may hold the default 9808.
            "METRICS_PORT": str(free_port()),
            "POKEMON_CATALOG": "*" if size is None else ",".join(names[:size]),
        }

    def _wanted(self, system: System) -> set[str]:
        chosen: set[str] = self.args.scenarios
        if self.args.quick and system.protocol != CELERY:
            # A smoke run checks the queue-only baselines start, take jobs and report;
            # their latency case waits out any job a 100-job run loses (the probe keeps
            # no acknowledgements), which only a full run's figures are worth.
            chosen = chosen & {"cold"}
        return set(system.scenarios) & chosen

    def _small(self, system: System) -> bool:
        """Whether `system` also runs the small-body cold case (a smoke run: two do)."""
        if self.args.profile or "small" not in self._wanted(system):
            return False
        return not self.args.quick or system.name in (PROJECT, TUNED)

    def _others(self, ctx: scenarios.Context, cold: dict[str, Any]) -> dict[str, Any]:
        """The scenarios after the cold runs, each system in turn."""
        out: dict[str, Any] = {}
        # Latency and faults are measured below saturation: at half this system's peak.
        rate = max(1.0, cold["jobs_per_s"] / 2)
        wanted = self._wanted(ctx.system)
        if "latency" in wanted:
            out["latency"] = self._scenario(ctx, "latency", lambda: scenarios.latency(ctx, rate))
        if "hot" in wanted:
            out["hot"] = self._scenario(ctx, "hot", lambda: scenarios.hot(ctx))
        if "catalog" in wanted:
            out["catalog"] = self._scenario(ctx, "catalog", lambda: scenarios.catalog(ctx))
        if "faulty" in wanted:
            out["faulty"] = self._scenario(ctx, "faulty", lambda: scenarios.faulty(ctx, rate))
        return out

    def _profile_small(self) -> bool:
        return bool(self.args.profile_small)

    def _profile(self, ctx: scenarios.Context, out: dict[str, Any], label: str) -> None:
        # Warmed up as for the rounds: a profile of the budget's slow start would show
        # its deferrals, not what a job costs.
        self._scenario(ctx, f"{label} warm-up", partial(scenarios.warm_up, ctx))
        profiler = Profiler(ctx.worker, self.log_dir)
        with profiler:
            out[label] = self._scenario(ctx, label, lambda: scenarios.cold(ctx))
        out["profile"] = profiler.summary(out[label])

    def _readiness(self, system: System, producer: Any, name: str, broker_db: int) -> Any:
        """When a worker takes jobs: a Celery ping, or else a first job stored.

        Dramatiq and the probe answer no ping; one job for `name` is sent and the worker
        is ready when its key appears (the scenarios flush it). Dramatiq also has each of
        its worker processes polling the broker (its heartbeats), one per core by default.
        """
        if system.protocol == CELERY:
            return None
        results = self.redis.client(0)
        queue = self.redis.client(broker_db)
        sent: list[str] = []

        def ready() -> bool:
            if not sent:
                results.delete(f"pokemon:{name}")  # another system's warm-up may have left it
                with sender(system, producer, self.redis.url_for(broker_db)) as enqueue:
                    sent.append(enqueue(name))
            if not results.exists(f"pokemon:{name}"):
                return False
            if system.protocol == DRAMATIQ_PROTOCOL:
                polling = int(queue.zcard("dramatiq:__heartbeats__"))
                return polling >= (os.cpu_count() or 1)  # its CLI default
            return True

        return ready

    def _scenario(self, ctx: scenarios.Context, name: str, run: Any) -> dict[str, Any]:
        started = time.monotonic()
        figures: dict[str, Any] = run()
        summary = ", ".join(
            f"{key}={figures[key]}"
            for key in ("jobs_per_s", "names_per_s", "p99_ms", "worker_cpu_ms_per_job", "passes")
            if key in figures
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
