"""What `enqueue --wait` shows while it waits: each retry and deferral as it happens, and
a fan-out's child jobs on a progress bar until every one has ended.

Both read only what Celery already publishes: the result backend sends every state a job
stores (RETRY with its error, then SUCCESS or FAILURE) to the caller waiting in
`AsyncResult.get(on_message=...)`, and a job that sent others keeps their ids in its
result (`children`), whose stored states say which have ended.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from apis import errors as upstream_errors
from telemetry.redact import redact

POLL_SECONDS = 0.2


def retry_line(meta: Mapping[str, Any]) -> str | None:
    """One line for a RETRY state: a deferral when a guard of ours held the call back
    (nothing was sent), else a retry; None for any other state.

    Celery hands the state with its error rebuilt as an exception (or, for a class this
    process cannot import, as its fields)."""
    if meta.get("status") != "RETRY":
        return None
    error = meta.get("result")
    if isinstance(error, BaseException):
        name, text = type(error).__name__, str(error)
        held_back = isinstance(error, upstream_errors.HeldBack)
    else:
        fields = error if isinstance(error, Mapping) else {}
        name = str(fields.get("exc_type", "?"))
        message = fields.get("exc_message") or []
        text = str(message[0] if isinstance(message, list) and message else message)
        held_back = False
    attempt = meta.get("retries")
    count = f" {int(attempt) + 1}" if isinstance(attempt, int) and not held_back else ""
    return f"{'deferred' if held_back else 'retry'}{count}: {name}: {redact(text)}"


def follow_children(backend: Any, ids: Sequence[str], timeout: float) -> tuple[int, int]:
    """Draw done/failed/total until every child job has ended or `timeout` passed; the
    (done, failed) counts. One MGET of their stored states per refresh."""
    keys = [backend.get_key_for_task(task_id) for task_id in ids]
    deadline = time.monotonic() + timeout
    done = failed = 0
    columns = (
        TextColumn("child jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = progress.add_task("children", total=len(ids), failed=0)
        while True:
            states = [
                backend.decode_result(value).get("status") if value else "PENDING"
                for value in backend.client.mget(keys)
            ]
            done = states.count("SUCCESS")
            failed = states.count("FAILURE")
            progress.update(bar, completed=done + failed, failed=failed)
            if done + failed == len(ids) or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)  # a refresh rate, not a synchronisation
    return done, failed
