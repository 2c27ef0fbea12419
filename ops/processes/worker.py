"""The worker process the suite and the benchmarks start: one class for both.

`python -m worker` (Celery's worker command, as production runs it) with a hostname of
its own, or any other command (the benchmark's baselines); from the repository root, in
its own session, ending with its parent (`children.popen`), its output in a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ops.processes.children import REPO_ROOT, popen, signal_group, stop_process
from ops.processes.waits import wait_until
from settings import setting_names

#: A worker stopped with SIGTERM finishes its running jobs first (a warm shutdown).
STOP_GRACE = 15.0


class WorkerProcess:
    """One worker subprocess, ready once it answers a Celery ping (or `ready()` says so).

    `env` is the worker's configuration: with `inherit` (the default) the project's
    settings come from `env` alone, none leaking in from the shell, and the rest of this
    process's environment is kept; without it, `env` is the whole environment.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        pool: str = "threads",
        concurrency: int = 8,
        extra_args: Sequence[str] = (),
        command: Sequence[str] = (),
        log_path: Path | None = None,
        cwd: Path = REPO_ROOT,
        inherit: bool = True,
    ) -> None:
        inherited = (
            {k: v for k, v in os.environ.items() if k not in setting_names()} if inherit else {}
        )
        self.env = {**inherited, **env, "PYTHONUNBUFFERED": "1"}
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.cwd = cwd
        self.loglevel = self.env.get("TEST_WORKER_LOGLEVEL", "INFO")
        self.command = (
            [sys.executable, *command]
            if command
            else [
                sys.executable, "-m", "worker", f"--loglevel={self.loglevel}",
                f"--pool={pool}", f"--concurrency={concurrency}", f"--hostname={self.name}",
                "--without-mingle", "--without-gossip", *extra_args,
            ]
        )  # fmt: skip
        self.log_path = log_path or Path(
            tempfile.mkstemp(prefix="apiworker-worker-", suffix=".log")[1]
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self,
        producer: Any = None,
        timeout: float = 30.0,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> WorkerProcess:
        """Start it and return once it is ready: `ready()`, or else this worker's answer
        to a ping through `producer` (a Celery app), and at INFO its "ready" line: remote
        control answers before the task queues are declared (on RabbitMQ a publish to a
        queue nobody declared yet goes nowhere). A worker that exits first fails it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        what = f"worker {self.name}"
        if ready is not None:
            wait_until(lambda: self._running() and ready(), timeout=timeout, what=what)
            return self
        assert producer is not None, "a Celery worker's readiness needs a producer"
        wait_until(lambda: self._answers_ping(producer), timeout=timeout, what=what)
        if not self._custom_command() and self.loglevel in ("INFO", "DEBUG"):
            wait_until(lambda: f"{self.name} ready." in self.log(), timeout=timeout,
                       what=f"{what} ready")  # fmt: skip
        return self

    def _custom_command(self) -> bool:
        return f"--hostname={self.name}" not in self.command

    def _running(self) -> bool:
        """True while it runs; a worker that exited is an error showing its log."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{self.log_tail()}")
        return True

    def _answers_ping(self, producer: Any) -> bool:
        self._running()
        destination = None if self._custom_command() else [self.name]
        return bool(producer.control.ping(destination=destination, timeout=0.5))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker dies as in an OOM kill."""
        if self.process is not None:
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the group (a warm shutdown), SIGKILL what is left after `grace`."""
        if self.process is not None:
            stop_process(self.process, timeout=grace)
            self.process = None
