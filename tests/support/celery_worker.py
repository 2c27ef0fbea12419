"""A wait with a deadline for the suite; the worker processes it starts are
`ops.processes.worker.WorkerProcess`.

Jobs reach them through `ops.producer.producer_app`: a client that knows only broker and
backend URLs and sends tasks by name, exactly as another service would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ops.processes.waits import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str = ""
) -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`
    (`TimeoutError`); ops/processes/waits.py's wait."""
    return wait_until(predicate, timeout=timeout, what=what or str(predicate), interval=interval)


def run_python(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python *argv` (`-c code`, `-m module ...`) in a fresh interpreter from the
    repository's root, with this environment: what a module does at start, seen from
    outside this test process (which has imported everything). Its exit status is the
    caller's to check."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
