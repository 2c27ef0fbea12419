"""`make run`: the whole service in the foreground, for development.

Finds a Redis (REDIS_URL when it answers, else a private redis-server under `.run/`;
`--private-redis` always the private one), then runs one worker process per CPU core,
one beat and, when installed, Flower, with their logs labelled on one stream.
`--offline` (`make run OFFLINE=1`) also starts the sandbox upstream and points every
upstream it serves at it, for a machine that cannot reach the real ones. Ctrl-C or SIGTERM
stops exactly what was started here; if any of it dies on its own, the rest is stopped
too and the exit code says so, so a half-running service is never mistaken for a
healthy one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from ops.processes.children import (
    REPO_ROOT,
    Child,
    PrefixedOutput,
    StopOptions,
    spawn,
    stop_children,
)
from ops.processes.ports import free_port, port_is_free
from ops.processes.redis_server import (
    PrivateRedis,
    RedisUnusable,
    find_redis_server,
    leftover_redis_pid,
    redis_answers,
    start_private_redis,
)
from ops.processes.waits import StartupFailed, wait_until
from ops.producer import producer_app
from sandbox.server import SANDBOX_TOKEN
from settings import ConfigurationError, checked_settings, get_settings, setting_names
from settings.errors import USAGE_EXIT_CODE
from telemetry.redact import masked_url
from upstreams import all_upstreams, offline_settings

RUN_DIR_ENV = "APIWORKER_RUN_DIR"
#: The second shell's settings, in the run folder: `source .run/env`.
ENV_FILE = "env"
# A stable port (the first free one) keeps the private Redis's URL the same between runs.
PRIVATE_REDIS_PORTS = range(6380, 6390)
SUPERVISE_INTERVAL = 0.1
WORKER_ANSWER_TIMEOUT = 30.0
ME = "run"


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM: the first asks for a clean stop, a second one to hurry.

    The handler only flips flags: taking a lock (print, Event.set) inside a signal
    handler can deadlock against the interrupted main thread holding the same lock.
    """

    requested: bool = False
    hurry: bool = False
    signals: list[int] = field(default_factory=list)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        if self.requested:
            self.hurry = True
        self.requested = True


@dataclass
class Redis:
    """The Redis the service will use, and the private server when we started one."""

    url: str
    private: PrivateRedis | None = None

    def children(self) -> list[Child]:
        """The private server's process, to be watched like the services."""
        child = self.private.child if self.private is not None else None
        return [] if child is None else [child]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.run",
        description="Run workers, beat and Flower in the foreground; Ctrl-C stops them all.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_cpu_count(),
        help="worker processes, each with the pool and WORKER_CONCURRENCY from the "
        "environment (default: one per CPU core, here %(default)s)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        default=os.environ.get("OFFLINE", "") not in ("", "0"),
        help="also start the sandbox upstream on loopback and point every upstream it "
        "serves at it (default: on when OFFLINE=1)",
    )
    parser.add_argument(
        "--private-redis",
        action="store_true",
        help="start a private redis-server under .run/ even when REDIS_URL answers",
    )
    parser.add_argument("--no-beat", action="store_true", help="do not run celery beat")
    parser.add_argument("--no-flower", action="store_true", help="do not run Flower")
    parser.add_argument(
        "--flower-port",
        type=int,
        default=int(os.environ.get("FLOWER_PORT", "5555")),
        help="Flower's port on 127.0.0.1 (default: FLOWER_PORT or 5555)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="seconds a clean stop may take (running jobs finish) before SIGKILL "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def _cpu_count() -> int:
    """CPU cores this process may use (a container's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def run_dir() -> Path:
    """Where private state (the Redis data) lives: APIWORKER_RUN_DIR, else `.run/`."""
    return Path(os.environ.get(RUN_DIR_ENV) or REPO_ROOT / ".run")


def _no_redis_message(url: str) -> str:
    return (
        f"No Redis: REDIS_URL ({masked_url(url)}) does not answer PING and redis-server "
        "is not on PATH. Any one of these fixes it:\n"
        "  - install redis-server (Debian/Ubuntu: sudo apt-get install redis-server; "
        "macOS: brew install redis), and `make run` starts a private one under .run/\n"
        "  - set REDIS_URL to a Redis that answers, e.g. REDIS_URL=redis://host:6379/0\n"
        "  - start the project's Redis container: docker compose up -d redis "
        "(it listens on 127.0.0.1:6379)"
    )


def ensure_redis(out: PrefixedOutput, *, private: bool = False) -> Redis | None:
    """REDIS_URL when it answers (unless `private`); else a private redis-server; else
    None, explained."""
    url = get_settings().worker.redis_url
    if not private and redis_answers(url):
        why = (
            "REDIS_URL answers PING"
            if os.environ.get("REDIS_URL")
            else "REDIS_URL is not set and its default answers PING: the broker and results "
            "go there; --private-redis (make run ARGS=--private-redis) starts a private one"
        )
        out.write(ME, f"Redis:  {masked_url(url)} ({why})")
        return Redis(url)
    binary = find_redis_server()
    if binary is None:
        out.write(ME, _no_redis_message(url))
        return None
    if private:
        out.write(ME, "--private-redis: not using REDIS_URL")
    else:
        out.write(ME, f"REDIS_URL ({masked_url(url)}) does not answer PING")
    data_dir = run_dir() / "redis"
    leftover = leftover_redis_pid(data_dir)
    if leftover is not None:
        out.write(
            ME,
            f"A redis-server from an earlier run still uses {data_dir} (pid {leftover}); "
            f"stop it first (kill {leftover}), or set {RUN_DIR_ENV} to another folder.",
        )
        return None
    out.write(ME, f"starting a private redis-server, data in {data_dir}")
    server = start_private_redis(
        binary, data_dir, out, appendonly=True, preferred_ports=PRIVATE_REDIS_PORTS
    )
    assert server.child is not None
    out.write(ME, f"started redis (pid {server.child.pid}): redis-server --port {server.port}")
    out.write(ME, f"Redis:  {server.url} (private redis-server, append-only file on)")
    return Redis(server.url, server)


@dataclass(frozen=True)
class Service:
    """One process to run: its label, its argv and what its environment adds."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def service_commands(args: argparse.Namespace, out: PrefixedOutput) -> list[Service]:
    """The processes to run, workers first."""
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    settings = get_settings().worker
    level = f"--loglevel={settings.log_level}"
    services = [
        Service(
            f"worker{i}",
            # Distinct node names: two nodes with one name confuse remote control and Flower.
            # `python -m worker` is Celery's `worker` command without the rest of its
            # command line: ~11 MiB less per process (worker/__main__.py).
            [sys.executable, "-m", "worker", level, f"--hostname=worker{i}.{os.getpid()}@%h"],
            _metrics_env(settings.metrics_port, i),
        )
        for i in range(1, args.workers + 1)
    ]
    if settings.metrics_port:
        ports = [settings.metrics_port + i for i in range(args.workers)]
        urls = ", ".join(f"http://127.0.0.1:{port}/metrics" for port in ports)
        out.write(ME, f"Metrics: {urls} (one per worker process)")
    if not args.no_beat:
        services.append(Service("beat", [*celery, "beat", level]))
    flower = _flower_command(args, out)
    if flower is not None:
        services.append(Service("flower", [*celery, *flower]))
    return services


def _metrics_env(first_port: int, worker: int) -> dict[str, str]:
    """Each worker process serves its own metrics, so each needs its own port."""
    if not first_port:
        return {}
    return {"METRICS_PORT": str(first_port + worker - 1)}


def _flower_command(args: argparse.Namespace, out: PrefixedOutput) -> list[str] | None:
    """Flower's arguments, or None (and why) when it is off, missing or its port is taken."""
    if args.no_flower:
        return None
    if importlib.util.find_spec("flower") is None:
        out.write(ME, "Flower: not installed (pip install -e '.[flower]'), not started")
        return None
    if not port_is_free(args.flower_port):
        out.write(
            ME,
            f"Flower: port {args.flower_port} is in use, not started "
            "(choose another with --flower-port or FLOWER_PORT)",
        )
        return None
    out.write(ME, f"Flower: http://127.0.0.1:{args.flower_port}")
    # Loopback only: without FLOWER_BASIC_AUTH its pages are open to whoever reaches them.
    return ["flower", "--address=127.0.0.1", f"--port={args.flower_port}"]


def _announce_celery_urls(out: PrefixedOutput) -> None:
    """CELERY_BROKER_URL / CELERY_RESULT_BACKEND take precedence over REDIS_URL: say so."""
    settings = get_settings().worker
    if settings.celery_broker_url:
        out.write(ME, f"Broker: {masked_url(settings.celery_broker_url)} (CELERY_BROKER_URL)")
    if settings.celery_result_backend:
        backend = masked_url(settings.celery_result_backend)
        out.write(ME, f"Result backend: {backend} (CELERY_RESULT_BACKEND)")


def child_environment(redis: Redis, sandbox_url: str | None = None) -> dict[str, str]:
    """The children's environment: ours, with REDIS_URL pointing at the Redis in use and,
    offline, every upstream the sandbox serves at it (their entries' `sandbox_path`)."""
    env = dict(os.environ)
    env["REDIS_URL"] = redis.url
    env["PYTHONUNBUFFERED"] = "1"
    if sandbox_url is not None:
        env.update(offline_settings(sandbox_url, SANDBOX_TOKEN))
    return env


def client_settings(env: dict[str, str]) -> dict[str, str]:
    """The settings the children run with that a client needs too: every setting of the
    service (settings.setting_names()) set in their environment, and the RabbitMQ
    management URL the CLI reads."""
    names = setting_names() | {"RABBITMQ_MANAGEMENT_URL"}
    return {name: env[name] for name in sorted(names) if env.get(name)}


def write_env_file(path: Path, settings: dict[str, str]) -> None:
    """`source`-able exports of `settings`, and this venv's bin first on PATH so that
    `apiworker` is found. Owner-only (0600): a URL or token in it may carry a secret."""
    lines = [
        "# Written by `make run` for a second shell: source it, then run apiworker.",
        "# Removed when `make run` stops; the settings are those of its workers.",
        *(f"export {name}={shlex.quote(value)}" for name, value in settings.items()),
        f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"',
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def shown_path(path: Path) -> str:
    """`path` as the user would type it from where they ran `make run`."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def start_sandbox(out: PrefixedOutput, started: list[Child]) -> str:
    """The sandbox upstream on a free loopback port, answering before any worker starts."""
    port = free_port()
    argv = [sys.executable, "-m", "sandbox", "--port", str(port)]
    child = spawn("sandbox", argv, output=out)
    started.append(child)
    out.write(ME, f"started sandbox (pid {child.pid}): {' '.join(argv[1:])}")
    wait_until(
        lambda: not port_is_free(port) or child.exit_code() is not None,
        timeout=30,
        what="the sandbox upstream",
    )
    if child.exit_code() is not None:
        raise StartupFailed("the sandbox upstream exited at start")
    base_url = f"http://127.0.0.1:{port}"
    served = ", ".join(u.name for u in all_upstreams() if u.sandbox_path)
    out.write(ME, f"Offline: the sandbox upstream at {base_url} serves {served}")
    return base_url


def start_services(
    services: list[Service],
    env: dict[str, str],
    out: PrefixedOutput,
    started: list[Child],
) -> None:
    """Start each service, adding it to `started` at once so a failure halfway through
    still leaves the caller a complete list of what to stop."""
    for service in services:
        if service.name == "flower":
            wait_for_a_worker(env, started, out)
        child = spawn(service.name, service.argv, output=out, env={**env, **service.env})
        started.append(child)
        out.write(ME, f"started {service.name} (pid {child.pid}): {' '.join(service.argv[1:])}")


def wait_for_a_worker(env: dict[str, str], started: Sequence[Child], out: PrefixedOutput) -> None:
    """Flower asks every worker for its queues as it starts, and logs a failure for each
    question nobody answered: started after the first worker answers, it logs none. A
    worker that does not answer within WORKER_ANSWER_TIMEOUT only delays Flower."""
    broker = env.get("CELERY_BROKER_URL") or env["REDIS_URL"]
    producer = producer_app(broker, broker, name="run")

    def answered() -> bool:
        if any(child.exit_code() is not None for child in started):
            return True  # supervise() reports it; Flower is not worth waiting for
        return bool(producer.control.ping(timeout=0.5))

    try:
        wait_until(answered, timeout=WORKER_ANSWER_TIMEOUT, what="a worker to answer")
    except StartupFailed:
        out.write(ME, "no worker answered yet: starting Flower anyway")
    finally:
        producer.close()


def supervise(children: Sequence[Child], stop: StopRequest, out: PrefixedOutput) -> int:
    """Block until a stop signal (0) or until any child exits on its own (1)."""
    while not stop.requested:
        for child in children:
            code = child.exit_code()
            if code is not None:
                out.write(ME, f"{child.name} exited unexpectedly (code {code}); stopping the rest")
                return 1
        time.sleep(SUPERVISE_INTERVAL)
    first = signal.Signals(stop.signals[0]).name if stop.signals else "stop"
    out.write(ME, f"{first} received: stopping (again to stop at once)")
    return 0


def shutdown(
    services: Sequence[Child],
    redis: Redis | None,
    stop: StopRequest,
    timeout: float,
    out: PrefixedOutput,
) -> None:
    """Services first (workers finish their jobs), the private Redis last."""

    def hurried() -> None:
        out.write(ME, "second signal: killing what is still running")

    stop_children(
        services, StopOptions(timeout=timeout, hurry=lambda: stop.hurry, on_hurry=hurried)
    )
    private = redis.private if redis is not None else None
    if private is not None:
        private.stop()
    if services or private is not None:
        out.write(ME, "everything started here has stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    out = PrefixedOutput()
    try:
        # The settings every child will check, checked once here first: a bad one is a
        # usage error (exit 2), named as the user set it, before anything starts.
        checked_settings()
    except ConfigurationError as error:
        for line in error.lines:
            out.write(ME, f"error: {line}")
        return USAGE_EXIT_CODE
    stop = StopRequest()
    stop.install()
    redis: Redis | None = None
    services: list[Child] = []
    env_file = run_dir() / ENV_FILE
    wrote_env_file = False
    try:
        redis = ensure_redis(out, private=args.private_redis)
        if redis is None:
            return 1
        _announce_celery_urls(out)
        if stop.requested:  # interrupted while Redis was starting: start nothing more
            return 0
        sandbox_url = start_sandbox(out, services) if args.offline else None
        env = child_environment(redis, sandbox_url)
        start_services(service_commands(args, out), env, out, services)
        write_env_file(env_file, client_settings(env))
        wrote_env_file = True
        out.write(ME, f"Second shell: source {shown_path(env_file)}")
        out.write(ME, "Ctrl-C stops everything")
        return supervise([*services, *redis.children()], stop, out)
    except (RedisUnusable, StartupFailed) as error:
        out.write(ME, f"error: {error}")
        return 1
    finally:
        if wrote_env_file:  # its addresses die with this run; another run's file stays
            env_file.unlink(missing_ok=True)
        shutdown(services, redis, stop, args.stop_timeout, out)


if __name__ == "__main__":
    raise SystemExit(main())
