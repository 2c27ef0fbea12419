"""The one process harness: `make run`, `make demo`, the benchmarks and the suite.

Free ports, bounded waits, children in their own sessions that end with their parent,
and private redis-servers (a durable one for `make run`, `DisposableRedis` for the suite
and the benchmarks).

Both start real processes (redis-server, Celery) and must leave nothing behind: every
child runs in its own process group, so stopping it also stops whatever it forked, and
nothing else on the machine is ever signalled. Waiting is always bounded by a deadline,
so a process that never comes up fails the caller instead of hanging it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import redis

from telemetry.redact import masked_url

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.05
# After SIGKILL a process is gone as soon as the kernel reaps it; this only bounds a wait
# on a process stuck in uninterruptible I/O.
KILL_WAIT = 10.0
_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


class RedisUnusable(RuntimeError):
    """A Redis answered but cannot be used (wrong password, not a Redis, bad URL)."""


class StartupFailed(RuntimeError):
    """A child process exited or stayed silent while it was expected to come up."""


class WaitTimedOut(StartupFailed, TimeoutError):
    """What `wait_until` waited for did not come within its deadline."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when `port` can be bound on `host`, so a server we start there gets it.

    Bound as servers bind (redis-server, Tornado for Flower): with SO_REUSEADDR, so the
    TIME_WAIT connections a just-stopped server leaves on its port do not count as taken,
    while a server listening there still does. Without it, a `make run` restarted within
    a minute found 6380 "taken" and moved its Redis to 6381.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def first_free_port(candidates: Iterable[int], host: str = LOOPBACK) -> int:
    """The first free port of `candidates` (a stable, guessable address), else any."""
    for port in candidates:
        if port_is_free(port, host):
            return port
    return free_port(host)


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> object:
    """Poll `predicate` until it returns something truthy, and return that; raise
    `WaitTimedOut` once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


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


class PrefixedOutput:
    """One stream shared by several processes: every line whole and labelled with its source.

    A lock keeps lines of different processes from interleaving mid-line.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 8) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.width = width
        self.color = self.stream.isatty() and "NO_COLOR" not in os.environ
        self._colors: dict[str, str] = {}
        self._lock = threading.Lock()

    def _label(self, name: str) -> str:
        label = f"{name:<{self.width}} |"
        if not self.color:
            return label
        code = self._colors.setdefault(name, _COLORS[len(self._colors) % len(_COLORS)])
        return f"\033[{code}m{label}\033[0m"

    def write(self, name: str, text: str) -> None:
        label = self._label(name)
        with self._lock:
            try:
                for line in text.splitlines() or [""]:
                    self.stream.write(f"{label} {line}\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # our own stdout went away (a closed pipe); the children carry on

    def follow(self, name: str, pipe: IO[bytes]) -> threading.Thread:
        """Copy `pipe` line by line until the process closes it."""

        def pump() -> None:
            with pipe:
                for raw in iter(pipe.readline, b""):
                    self.write(name, raw.decode(errors="replace").rstrip("\r\n"))

        thread = threading.Thread(target=pump, name=f"output-{name}", daemon=True)
        thread.start()
        return thread


@dataclass
class Child:
    """A process we started, leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """The exit code once the process has ended (and reaps it), else None."""
        return self.process.poll()


Output = PrefixedOutput | Path


def _end_with_parent(parent: int) -> Callable[[], None]:
    """A pre-exec hook: the child gets SIGTERM when its parent dies, even by SIGKILL.

    Each child leads its own session, so no terminal or process-group signal reaches it
    once the parent is gone; Linux's parent-death signal does. If the parent died before
    the hook ran, the child exits at once instead of running as an orphan.
    """
    prctl = _prctl()

    def hook() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return hook


PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[[int, int], int] | None:
    """libc's prctl, looked up before any fork (a forked child must not load libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function: Callable[[int, int], int] = libc.prctl
    return function


def popen(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen in a new session, ended by the parent-death signal when this process dies."""
    return subprocess.Popen(  # noqa: S603 - fixed argument lists, no shell
        list(args), start_new_session=True, preexec_fn=_end_with_parent(os.getpid()), **kwargs
    )


def stop_process(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM the process's group, SIGKILL it if it is still there after `timeout`."""
    stop_children([Child("process", process)], StopOptions(timeout=timeout))


def spawn(
    name: str,
    args: Sequence[str],
    *,
    output: Output,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> Child:
    """Start `args` in a new session; its output goes to `output` (labelled, or a log file).

    A new session means a terminal's Ctrl-C reaches only the parent, which then stops the
    children in order instead of having them all die at once mid-job; the parent-death
    signal ends them if the parent itself is killed.
    """
    base_env = dict(os.environ if env is None else env)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    if isinstance(output, Path):
        with output.open("ab") as log:
            process = popen(
                args, cwd=cwd, env=base_env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return Child(name, process)
    process = popen(
        args, cwd=cwd, env=base_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    return Child(name, process, output.follow(name, process.stdout))


def signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to the process group `pgid`; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Only a reused group id owned by someone else answers so: not ours any more.
        return False
    return True


def group_alive(child: Child) -> bool:
    """True while the child or anything it forked is still running."""
    child.exit_code()  # reap the leader: a zombie still counts as a group member
    return signal_group(child.pid, 0)


@dataclass
class StopOptions:
    """How patiently to stop: `timeout` for a clean exit, `hurry` to cut it short."""

    timeout: float = 30.0
    hurry: Callable[[], bool] = field(default=lambda: False)
    on_hurry: Callable[[], None] | None = None


def stop_children(children: Sequence[Child], options: StopOptions | None = None) -> None:
    """SIGTERM every child's group at once, wait up to the timeout, then SIGKILL the rest.

    Signalling all groups together lets them shut down in parallel; a group that is
    already gone is never signalled again, so a recycled group id is never hit.
    """
    opts = options or StopOptions()
    running = [child for child in children if group_alive(child)]
    for child in running:
        signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + opts.timeout
    while running:
        running = [child for child in running if group_alive(child)]
        if not running:
            break
        if opts.hurry():
            if opts.on_hurry is not None:
                opts.on_hurry()
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    for child in running:
        signal_group(child.pid, signal.SIGKILL)
    for child in children:
        _reap(child)


def _reap(child: Child) -> None:
    """Collect the exit status and let the output thread print the last lines."""
    try:
        child.process.wait(timeout=KILL_WAIT)
    except subprocess.TimeoutExpired:
        signal_group(child.pid, signal.SIGKILL)
        child.process.wait(timeout=KILL_WAIT)
    if child.reader is not None:
        child.reader.join(timeout=2.0)


def find_redis_server() -> str | None:
    """The redis-server binary on PATH, if any."""
    return shutil.which("redis-server")


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log file, for an error message that explains itself."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


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
            _reap(self.child)
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
