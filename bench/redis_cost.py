"""What a job costs Redis, measured: `python -m bench.redis_cost --jobs 500`.

Three private redis-servers on free loopback ports, one per role, so each role's figures
stand apart: the results store (`REDIS_URL`: results, leases, breaker and rate-limit
state, event streams), Celery's result backend (`CELERY_RESULT_BACKEND`) and the broker
(`CELERY_BROKER_URL`). One real worker (`python -m worker`, threads x16, defaults
otherwise) serves jobs from the sandbox upstream (in this process, 50 ms of latency);
a stock Celery producer (`ops.producer.producer_app`) sends them by name.

Two phases, each bracketed by `INFO commandstats` and `INFO stats` on every server:

- **cold**: N jobs for N distinct names (`sandbox.pokeapi.load_catalogue().names`),
  none stored yet: every one fetches from the upstream and writes its result;
- **fresh**: the same N names again, within FRESHNESS_MAX_AGE: answered from Redis.

Completion is read from the worker's `/metrics` (`apiworker_jobs_total`), not from
Redis, so the measurement adds no command of its own. Before the phases the worker sits
idle for a few seconds, also measured: its background calls (the broker's polling,
heartbeats) are reported per second and subtracted from the phases' per-job figures.

With `--broker amqp` (default: both) the broker is a private RabbitMQ node
(tests/support/rabbitmq.py) with the vhost set up as `apiworker rabbitmq apply-policy`
does; Redis then holds only results and the result backend.

With `--cluster` the results store is a private Redis Cluster (tests/support/
redis_cluster.py: 3 masters, 3 replicas, EVENTS_PARTITIONS=16), each master measured as
a role of its own; a last table gives each master's share of the commands and CPU.

Prints Markdown tables: per role and phase, commands sent and run, input and output
bytes and the server's main-thread CPU per job; then calls per job per command. MONITOR
(which tells a script's own calls apart) costs the server CPU: take the CPU column from
a run with `--no-monitor`.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import redis

from bench.harness import counter_total
from ops.processes.ports import free_port
from ops.processes.redis_server import DisposableRedis
from ops.processes.waits import wait_until
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from sandbox.pokeapi import load_catalogue
from sandbox.server import SandboxServer

FETCH = "tasks.pokemon.fetch_pokemon"
ROLES = ("results", "backend", "broker")
LATENCY = 0.05
IDLE_SECONDS = 5.0


class Monitor:
    """`MONITOR` on a raw connection: which commands ran inside a Lua script.

    `INFO commandstats` counts a script's own calls as well as the EVALSHA, so round
    trips are the calls minus these. The bytes MONITOR sends are counted too, and taken
    off the server's output bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.lock = threading.Lock()
        self.bytes = 0
        self.in_script: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            lines = (pending + chunk).split(b"\r\n")
            pending = lines.pop()
            with self.lock:
                self.bytes += len(chunk)
                for line in lines:
                    _head, _, rest = line.partition(b" lua] ")
                    if rest:
                        name = rest.split(b" ", 1)[0].strip(b'"').decode().lower()
                        self.in_script[name] = self.in_script.get(name, 0) + 1

    def read(self) -> tuple[int, dict[str, int]]:
        time.sleep(0.2)  # what the server wrote last has arrived
        with self.lock:
            return self.bytes, dict(self.in_script)

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Snapshot:
    calls: dict[str, int]  # every command executed, a script's own calls included
    in_script: dict[str, int]  # of which inside a Lua script
    net_in: int
    net_out: int
    cpu: float  # seconds of the server's main thread (the one that runs commands)

    @classmethod
    def of(cls, client: redis.Redis, monitor: Monitor | None) -> Snapshot:
        commands = client.info("commandstats")
        stats = client.info("stats")
        cpu = client.info("cpu")
        monitored, in_script = monitor.read() if monitor is not None else (0, {})
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commands.items()}
        net_out = int(stats["total_net_output_bytes"]) - monitored
        main_thread = float(cpu["used_cpu_user_main_thread"]) + float(
            cpu["used_cpu_sys_main_thread"]
        )
        return cls(calls, in_script, int(stats["total_net_input_bytes"]), net_out, main_thread)

    def minus(self, before: Snapshot) -> Snapshot:
        ignored = ("info", "monitor")
        calls = {n: c - before.calls.get(n, 0) for n, c in self.calls.items()}
        scripted = {n: c - before.in_script.get(n, 0) for n, c in self.in_script.items()}
        return Snapshot(
            {n: c for n, c in calls.items() if c and n not in ignored},
            {n: c for n, c in scripted.items() if c},
            self.net_in - before.net_in,
            self.net_out - before.net_out,
            self.cpu - before.cpu,
        )

    def trips(self) -> dict[str, int]:
        """Commands sent by a client (round trips, a pipeline's each counted)."""
        return {n: c - self.in_script.get(n, 0) for n, c in self.calls.items()}


@dataclass(frozen=True)
class Phase:
    """One phase's cost on one server: totals, and the idle rate to subtract."""

    jobs: int
    seconds: float
    used: Snapshot
    idle: Snapshot
    idle_seconds: float

    def per_job(self, total: float, idle_total: float) -> float:
        background = idle_total / self.idle_seconds * self.seconds
        return max(total - background, 0.0) / self.jobs

    def calls(self, command: str | None = None) -> float:
        """Commands executed per job, a script's own included."""
        if command is None:
            return self.per_job(sum(self.used.calls.values()), sum(self.idle.calls.values()))
        return self.per_job(self.used.calls.get(command, 0), self.idle.calls.get(command, 0))

    def trips(self, command: str | None = None) -> float:
        """Commands sent per job (a script call is one)."""
        used, idle = self.used.trips(), self.idle.trips()
        if command is None:
            return self.per_job(sum(used.values()), sum(idle.values()))
        return self.per_job(used.get(command, 0), idle.get(command, 0))

    def net_in(self) -> float:
        return self.per_job(self.used.net_in, self.idle.net_in)

    def net_out(self) -> float:
        return self.per_job(self.used.net_out, self.idle.net_out)

    def cpu_us(self) -> float:
        """Microseconds of the server's main thread per job."""
        return self.per_job(self.used.cpu, self.idle.cpu) * 1e6


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    from tests.support.rabbitmq import RabbitNode, RabbitServer

    node = RabbitNode()
    try:
        node.start()
        yield RabbitServer.of_node(node).create_vhost()
    finally:
        node.cleanup()


def jobs_done(metrics_url: str) -> int:
    return counter_total(metrics_url, "apiworker_jobs", task=FETCH)


def measure(
    broker: str, jobs: int, monitor: bool, cluster: bool = False
) -> dict[str, dict[str, Phase]]:
    """{phase: {role: Phase}} for one broker kind. With `cluster`, the results store is
    a private Redis Cluster (3 masters, 3 replicas; EVENTS_PARTITIONS=16) and each
    master is a role of its own (`results m1`...), so their shares can be compared."""
    names = list(load_catalogue().names[:jobs])
    if len(names) < jobs:
        raise SystemExit(f"the sandbox catalogue has {len(names)} names, fewer than {jobs}")
    with ExitStack() as stack:
        servers: dict[str, DisposableRedis] = {}
        roles = ROLES if broker == "redis" else ROLES[:2]
        for role in roles[1:] if cluster else roles:
            server = DisposableRedis(prefix=f"apiworker-cost-{role}-").start()
            stack.callback(server.cleanup)
            servers[role] = server
        extra: dict[str, str] = {}
        if cluster:
            from tests.support.redis_cluster import PrivateCluster

            private = PrivateCluster().start()
            stack.callback(private.cleanup)
            for index, master in enumerate(private.masters_now(), start=1):
                servers[f"results m{index}"] = master
            extra = {
                "REDIS_URL": servers["backend"].url_for(1),  # beat's only; none runs here
                "REDIS_CLUSTER_NODES": private.setting,
                "EVENTS_PARTITIONS": "16",
            }
        broker_url = (
            servers["broker"].url_for(0)
            if broker == "redis"
            else stack.enter_context(rabbit_vhost())
        )
        sandbox = SandboxServer(latency=LATENCY, prewarm=False).start()
        stack.callback(sandbox.stop)
        metrics_port = free_port()
        env = {
            "REDIS_URL": servers.get("results", servers["backend"]).url_for(0),
            "CELERY_BROKER_URL": broker_url,
            "CELERY_RESULT_BACKEND": servers["backend"].url_for(0),
            "POKEAPI_BASE_URL": sandbox.pokeapi_url,
            "CMS_BASE_URL": sandbox.cms_url,
            "SEMAPHORE_BASE_URL": sandbox.semaphore_url,
            "SEMAPHORE_API_TOKEN": sandbox.semaphore_token,
            "METRICS_PORT": str(metrics_port),
            "TEST_WORKER_LOGLEVEL": "WARNING",
            **extra,
        }
        producer = producer_app(broker_url, env["CELERY_RESULT_BACKEND"])
        stack.callback(producer.close)
        worker = WorkerProcess(env, concurrency=16)
        stack.callback(worker.stop)
        worker.start(producer, timeout=90)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until(lambda: _answers(metrics_url), timeout=30, what="the worker's metrics")
        clients = {role: server.client() for role, server in servers.items()}
        monitors: dict[str, Monitor | None] = {
            role: Monitor(server.port) if monitor else None for role, server in servers.items()
        }
        for watching in monitors.values():
            if watching is not None:
                stack.callback(watching.close)
        # Warm up (connections, script loads, queue declarations) with names not measured.
        spare = list(load_catalogue().names[-5:])
        run_phase(producer, spare, metrics_url)
        time.sleep(1.0)

        before = {role: Snapshot.of(c, monitors[role]) for role, c in clients.items()}
        time.sleep(IDLE_SECONDS)
        idle = {
            role: Snapshot.of(c, monitors[role]).minus(before[role]) for role, c in clients.items()
        }

        out: dict[str, dict[str, Phase]] = {}
        for phase in ("cold", "fresh"):
            before = {role: Snapshot.of(c, monitors[role]) for role, c in clients.items()}
            seconds = run_phase(producer, names, metrics_url)
            out[phase] = {
                role: Phase(
                    jobs,
                    seconds,
                    Snapshot.of(c, monitors[role]).minus(before[role]),
                    idle[role],
                    IDLE_SECONDS,
                )
                for role, c in clients.items()
            }
        for client in clients.values():
            client.close()
        return out


def _answers(url: str) -> bool:
    try:
        jobs_done(url)
    except OSError:
        return False
    return True


def run_phase(producer: object, names: list[str], metrics_url: str) -> float:
    """Send a job per name and wait until the worker has finished them all; seconds."""
    start_count = jobs_done(metrics_url)
    started = time.monotonic()
    for name in names:
        producer.send_task(FETCH, args=[name])  # type: ignore[attr-defined]
    wait_until(lambda: jobs_done(metrics_url) >= start_count + len(names),
               timeout=60 + len(names) * 0.5, interval=0.1, what="every job finished")  # fmt: skip
    return time.monotonic() - started


def report(results: Mapping[str, dict[str, dict[str, Phase]]], jobs: int) -> str:
    lines = [
        f"{jobs} jobs per phase; per job, the idle worker's background calls subtracted.",
        "",
        "| broker | phase | Redis role | commands sent/job | commands run/job | "
        "bytes in/job | bytes out/job | Redis CPU µs/job | jobs/s | idle commands sent/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for broker, phases in results.items():
        for phase, roles in phases.items():
            for role, cost in roles.items():
                lines.append(
                    f"| {broker} | {phase} | {role} | {cost.trips():.2f} | {cost.calls():.2f} | "
                    f"{cost.net_in():,.0f} | {cost.net_out():,.0f} | {cost.cpu_us():.0f} | "
                    f"{cost.jobs / cost.seconds:.0f} | "
                    f"{sum(cost.idle.trips().values()) / cost.idle_seconds:.1f} |"
                )
            trips = sum(cost.trips() for cost in roles.values())
            calls = sum(cost.calls() for cost in roles.values())
            net_in = sum(cost.net_in() for cost in roles.values())
            net_out = sum(cost.net_out() for cost in roles.values())
            cpu = sum(cost.cpu_us() for cost in roles.values())
            lines.append(
                f"| {broker} | {phase} | **all** | **{trips:.2f}** | **{calls:.2f}** | "
                f"**{net_in:,.0f}** | **{net_out:,.0f}** | **{cpu:.0f}** | | |"
            )
    columns = [(b, p) for b, phases in results.items() for p in phases]
    lines += [
        "",
        "Per command: sent / run inside scripts, per job.",
        "",
        "| Redis role | command | " + " | ".join(f"{b} {p}" for b, p in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    every_role = dict.fromkeys(
        role for phases in results.values() for roles in phases.values() for role in roles
    )
    for role in every_role:
        commands = sorted(
            {
                name
                for phases in results.values()
                for roles in phases.values()
                if role in roles
                for name in {*roles[role].used.calls}
            }
        )
        for command in commands:
            cells = []
            for broker, phase in columns:
                found = results[broker][phase].get(role)
                if found is None:
                    cells.append("-")
                    continue
                sent, run = found.trips(command), found.calls(command) - found.trips(command)
                cells.append(f"{sent:.2f}" + (f" / {run:.2f}" if run >= 0.005 else ""))
            if any(cell not in ("-", "0.00") for cell in cells):
                lines.append(f"| {role} | {command} | " + " | ".join(cells) + " |")
    return "\n".join(lines + spread(results))


def spread(results: Mapping[str, dict[str, dict[str, Phase]]]) -> list[str]:
    """With a cluster: each master's share of the results store's commands and CPU."""
    lines: list[str] = []
    for broker, phases in results.items():
        for phase, roles in phases.items():
            masters = {role: cost for role, cost in roles.items() if role.startswith("results m")}
            if not masters:
                continue
            if not lines:
                lines += [
                    "",
                    "The results store's masters: commands run and Redis CPU per job, and "
                    "each master's share.",
                    "",
                    "| broker | phase | master | commands run/job | share | "
                    "Redis CPU µs/job | share |",
                    "|---|---|---|---|---|---|---|",
                ]
            calls = sum(cost.calls() for cost in masters.values()) or 1.0
            cpu = sum(cost.cpu_us() for cost in masters.values()) or 1.0
            for role, cost in masters.items():
                lines.append(
                    f"| {broker} | {phase} | {role.removeprefix('results ')} | "
                    f"{cost.calls():.2f} | {cost.calls() / calls:.0%} | "
                    f"{cost.cpu_us():.0f} | {cost.cpu_us() / cpu:.0%} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs per phase (distinct names)")
    parser.add_argument("--broker", choices=("redis", "amqp", "both"), default="both")
    parser.add_argument(
        "--no-monitor",
        action="store_true",
        help="without MONITOR: no split of script calls (sent = run), Redis CPU not inflated",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the results store on a private Redis Cluster (3 masters + 3 replicas), "
        "each master's share reported",
    )
    args = parser.parse_args()
    brokers = ("redis", "amqp") if args.broker == "both" else (args.broker,)
    results = {
        broker: measure(broker, args.jobs, not args.no_monitor, args.cluster) for broker in brokers
    }
    print(report(results, args.jobs))


if __name__ == "__main__":
    main()
