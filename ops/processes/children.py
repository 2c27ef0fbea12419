"""Children in their own sessions that end with their parent.

Every child runs in its own process group, so stopping it also stops whatever it forked,
and nothing else on the machine is ever signalled. `end_with_parent` is the one
parent-death hook: the suite's RabbitMQ nodes use it too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from ops.processes.waits import POLL_INTERVAL

REPO_ROOT = Path(__file__).resolve().parents[2]


# After SIGKILL a process is gone as soon as the kernel reaps it; this only bounds a wait
# on a process stuck in uninterruptible I/O.
KILL_WAIT = 10.0


_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


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


def end_with_parent(parent: int) -> Callable[[], None]:
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
        list(args), start_new_session=True, preexec_fn=end_with_parent(os.getpid()), **kwargs
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
        reap(child)


def reap(child: Child) -> None:
    """Collect the exit status and let the output thread print the last lines."""
    try:
        child.process.wait(timeout=KILL_WAIT)
    except subprocess.TimeoutExpired:
        signal_group(child.pid, signal.SIGKILL)
        child.process.wait(timeout=KILL_WAIT)
    if child.reader is not None:
        child.reader.join(timeout=2.0)


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log file, for an error message that explains itself."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
