"""`python -m ops.run` as a test drives it: a subprocess with its output collected."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, cast

from settings import setting_names
from tests.support.celery_worker import REPO_ROOT, wait_for

START_TIMEOUT = 45

# Settings a developer's shell may carry that would point the children elsewhere.
INHERITED_SETTINGS = setting_names() | {"FLOWER_BASIC_AUTH", "FLOWER_PORT"}


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS}
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1", **overrides)
    return env


class Output:
    """Collects a process's output lines from a thread, so reading never blocks the test."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def search(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.text())

    def join(self) -> None:
        self._thread.join(timeout=5)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class RunProcess:
    """`python -m ops.run` as a subprocess, with its output collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.run", *args],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.output = Output(self.process)

    def printed(self, pattern: str) -> re.Match[str] | None:
        """The first match in the output so far; fails at once if the process has ended."""
        if self.process.poll() is not None:
            raise AssertionError(f"ops.run exited ({self.process.returncode}):\n{self.text}")
        return self.output.search(pattern)

    def wait_printed(self, pattern: str) -> re.Match[str]:
        found = wait_for(lambda: self.printed(pattern), timeout=START_TIMEOUT, what=pattern)
        return cast(re.Match[str], found)

    def started(self) -> dict[str, int]:
        """Each child's name and pid, as announced by ops.run."""
        lines = re.findall(r"started (\S+) \(pid (\d+)\)", self.output.text())
        return {name: int(pid) for name, pid in lines}

    @property
    def text(self) -> str:
        return self.output.text()

    def kill_everything(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for pid in self.started().values():
            if group_exists(pid):
                os.killpg(pid, signal.SIGKILL)
        self.output.join()
