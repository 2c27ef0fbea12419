"""A wait with a deadline for the suite; the worker processes it starts are
`ops.processes.worker.WorkerProcess`.

Jobs reach them through `ops.producer.producer_app`: a client that knows only broker and
backend URLs and sends tasks by name, exactly as another service would.
"""

from __future__ import annotations

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
