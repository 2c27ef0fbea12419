"""Private redis-servers: a durable one for `make run` (`start_private_redis`),
`DisposableRedis` for the suite and the benchmarks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis

from ops.processes.children import (
    Child,
    Output,
    StopOptions,
    reap,
    signal_group,
    spawn,
    stop_children,
    tail,
)
from ops.processes.ports import LOOPBACK, first_free_port, free_port, port_is_free
from ops.processes.waits import StartupFailed, wait_until
from telemetry.redact import masked_url


class RedisUnusable(RuntimeError):
    """A Redis answered but cannot be used (wrong password, not a Redis, bad URL)."""


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis at `url` answers PING; False when nothing usable listens there.

    A server that answers but refuses us (bad password) raises `RedisUnusable`: starting a
    private Redis instead would hide a configuration mistake.
    """
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as error:
        raise RedisUnusable(f"{masked_url(url)} is not a Redis URL: {error}") from error
    try:
        return bool(client.ping())
    except redis.AuthenticationError as error:
        raise RedisUnusable(f"{masked_url(url)} refused the credentials: {error}") from error
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    except redis.ResponseError as error:
        raise RedisUnusable(f"{masked_url(url)} answered PING with an error: {error}") from error
    finally:
        client.close()


def find_redis_server() -> str | None:
    """The redis-server binary on PATH, if any."""
    return shutil.which("redis-server")


@dataclass
class PrivateRedis:
    """A redis-server on loopback that belongs to the caller, with its data in `data_dir`.

    `appendonly` makes queued jobs survive a restart of this server (the AOF in
    `data_dir` is replayed at start); a throwaway instance skips it.
    """

    binary: str
    data_dir: Path
    port: int
    appendonly: bool = True
    #: More redis-server options (they come last, so they win).
    args: tuple[str, ...] = ()
    child: Child | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    @property
    def pidfile(self) -> Path:
        return redis_pidfile(self.data_dir)

    def command(self, *, logfile: Path | None) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--pidfile", str(self.pidfile),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "" if logfile is None else str(logfile),
            *self.args,
        ]  # fmt: skip

    def start(self, output: Output, *, timeout: float = 15.0) -> Child:
        """Start the server and return once it answers PING (or raise `StartupFailed`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logfile = output if isinstance(output, Path) else None
        child = spawn("redis", self.command(logfile=logfile), output=output, cwd=self.data_dir)
        self.child = child

        def ready() -> bool:
            code = child.exit_code()
            if code is not None:
                detail = f":\n{tail(logfile)}" if logfile is not None else " (see its output)"
                raise StartupFailed(f"redis-server exited with code {code}{detail}")
            return redis_answers(self.url, timeout=0.5)

        try:
            wait_until(ready, timeout=timeout, what=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return child

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: redis-server flushes its AOF and exits; SIGKILL only after `timeout`."""
        if self.child is not None:
            stop_children([self.child], StopOptions(timeout=timeout))
            self.child = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        if self.child is not None:
            signal_group(self.child.pid, signal.SIGKILL)
            reap(self.child)
            self.child = None


class DisposableRedis:
    """A throwaway redis-server on a free loopback port, its files in a temporary
    directory: the suite's and the benchmark's (`make run` keeps a durable one,
    `start_private_redis`)."""

    missing = "redis-server is not installed (apt-get install redis-server)"

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        args: tuple[str, ...] = (),
        prefix: str = "apiworker-redis-",
    ) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError(self.missing)
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.server = PrivateRedis(
            binary, self.dir, port or free_port(), appendonly=appendonly, args=args
        )

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def url_for(self, db: int) -> str:
        return self.server.url_for(db)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.server.child.process if self.server.child is not None else None

    def start(self, timeout: float = 10.0) -> DisposableRedis:
        """Start it; returns once it answers PING."""
        self.server.start(self.dir / "redis.log", timeout=timeout)
        return self

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url_for(db), decode_responses=True)

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        self.server.kill()

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: the server flushes its files), SIGKILL after 10 s."""
        self.server.stop(timeout=10.0)

    def restart(self) -> None:
        """SIGTERM and start again: Redis writes its append-only file out first."""
        self.stop()
        self.start()

    def crash_and_start(self) -> None:
        """SIGKILL and start again: only what the fsync policy had written survives."""
        self.kill()
        self.start()

    def cleanup(self) -> None:
        """Stop it and remove its files."""
        self.server.stop(timeout=10.0)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_pidfile(data_dir: Path) -> Path:
    return data_dir / "redis-server.pid"


def leftover_redis_pid(data_dir: Path) -> int | None:
    """The pid of a redis-server an earlier, killed run left running on `data_dir`.

    Two servers appending to one AOF would corrupt it, so the caller must refuse.
    """
    try:
        pid = int(redis_pidfile(data_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"redis-server" in cmdline else None


def start_private_redis(
    binary: str,
    data_dir: Path,
    output: Output,
    *,
    appendonly: bool,
    preferred_ports: Iterable[int] = (),
    attempts: int = 3,
) -> PrivateRedis:
    """Start a `PrivateRedis` on a free port, preferring `preferred_ports`.

    A port can be taken between our check and redis-server's bind (another run starting
    at the same moment); then the next free port is tried, up to `attempts` times.
    """
    candidates = list(preferred_ports)
    for attempt in range(1, attempts + 1):
        server = PrivateRedis(binary, data_dir, first_free_port(candidates), appendonly=appendonly)
        try:
            server.start(output)
        except StartupFailed:
            if attempt == attempts or port_is_free(server.port):
                raise  # not a lost race: a real failure
            continue
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")
