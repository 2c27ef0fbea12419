"""Process plumbing shared by `python -m ops.run` and `python -m ops.demo`.

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
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

import redis

from redisconn.settings import masked_url

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


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when `port` can be bound on `host`, so a server we start there gets it."""
    with socket.socket() as sock:
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
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll `predicate` until it holds; raise `StartupFailed` once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise StartupFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


#: The URL without its password, so it can be printed (the one masking rule of redisconn).
redacted = masked_url


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis at `url` answers PING; False when nothing usable listens there.

    A server that answers but refuses us (bad password) raises `RedisUnusable`: starting a
    private Redis instead would hide a configuration mistake.
    """
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as error:
        raise RedisUnusable(f"{redacted(url)} is not a Redis URL: {error}") from error
    try:
        return bool(client.ping())
    except redis.AuthenticationError as error:
        raise RedisUnusable(f"{redacted(url)} refused the credentials: {error}") from error
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    except redis.ResponseError as error:
        raise RedisUnusable(f"{redacted(url)} answered PING with an error: {error}") from error
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
    on_exec = _end_with_parent(os.getpid())
    if isinstance(output, Path):
        with output.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - fixed argument lists, no shell
                list(args), cwd=cwd, env=base_env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=on_exec,
            )  # fmt: skip
        return Child(name, process)
    process = subprocess.Popen(  # noqa: S603 - fixed argument lists, no shell
        list(args), cwd=cwd, env=base_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=on_exec,
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
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

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
