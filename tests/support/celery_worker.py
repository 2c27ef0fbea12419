"""Real Celery worker processes for integration tests, and a wait with a deadline.

Jobs reach them through `ops.producer.producer_app`: a client that knows only broker and
backend URLs and sends tasks by name, exactly as another service would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from celery import Celery

from ops.processes.waits import wait_until
from settings import setting_names

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str = ""
) -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`
    (`TimeoutError`); ops/processes/waits.py's wait."""
    return wait_until(predicate, timeout=timeout, what=what or str(predicate), interval=interval)


class WorkerProcess:
    """`python -m worker` (Celery's worker command, as production runs it) as a subprocess."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        pool: str = "threads",
        concurrency: int = 8,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        # The project's settings come from `env` alone: none leaks in from the shell or
        # from a test's in-process environment, so unnamed settings are the defaults.
        inherited = {k: v for k, v in os.environ.items() if k not in setting_names()}
        self.env = {**inherited, **env, "PYTHONUNBUFFERED": "1"}
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.pool = pool
        self.concurrency = concurrency
        self.extra_args = extra_args
        self.log_path = Path(tempfile.mkstemp(prefix="apiworker-worker-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, producer: Celery, timeout: float = 30.0) -> WorkerProcess:
        args = [
            sys.executable, "-m", "worker",
            f"--loglevel={self.env.get('TEST_WORKER_LOGLEVEL', 'INFO')}",
            f"--pool={self.pool}", f"--concurrency={self.concurrency}",
            f"--hostname={self.name}", "--without-mingle", "--without-gossip",
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: self._answers_ping(producer), timeout=timeout, what=f"worker {self.name}")
        if self.env.get("TEST_WORKER_LOGLEVEL", "INFO") in ("INFO", "DEBUG"):
            # Remote control answers before the task queues are declared (on RabbitMQ a
            # publish to a queue nobody declared yet goes nowhere); "ready" comes after.
            wait_for(lambda: f"{self.name} ready." in self.log(), timeout=timeout,
                     what=f"worker {self.name} ready")  # fmt: skip
        return self

    def _answers_ping(self, producer: Celery) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{self.log()}")
        replies = producer.control.ping(destination=[self.name], timeout=0.5)
        return bool(replies)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker dies as in an OOM kill."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
