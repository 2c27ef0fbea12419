"""Which result key the current job read or wrote, for its one-line outcome log.

Celery's threads pool reuses threads, so the job log resets this at the start of every
job; a context variable keeps concurrent jobs in different threads apart.
"""

from __future__ import annotations

from contextvars import ContextVar

_result_keys: ContextVar[list[str] | None] = ContextVar("result_keys", default=None)


def begin_job() -> None:
    _result_keys.set([])


def note_result_key(key: str) -> None:
    keys = _result_keys.get()
    if keys is not None and key not in keys:
        keys.append(key)


def result_keys() -> list[str]:
    return list(_result_keys.get() or [])
