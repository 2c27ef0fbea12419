"""Which result key the current job read or wrote, and what its conditional fetches
found (not modified / modified), for its one-line outcome log.

Celery's threads pool reuses threads, so the job log resets this at the start of every
job; a context variable keeps concurrent jobs in different threads apart.
"""

from __future__ import annotations

from contextvars import ContextVar

_result_keys: ContextVar[list[str] | None] = ContextVar("result_keys", default=None)
_revalidations: ContextVar[dict[str, int] | None] = ContextVar("revalidations", default=None)


def begin_job() -> None:
    _result_keys.set([])
    _revalidations.set({})


def note_revalidation(*, modified: bool, count: int = 1) -> None:
    """A conditional fetch of this job came back modified (200) or not (304)."""
    counts = _revalidations.get()
    if counts is not None and count:
        outcome = "modified" if modified else "not_modified"
        counts[outcome] = counts.get(outcome, 0) + count


def revalidations() -> dict[str, int]:
    """This job's conditional fetches by outcome (empty when it made none)."""
    return dict(_revalidations.get() or {})


def revalidation_text(counts: dict[str, int]) -> str:
    """The outcome line's field: `not_modified`, `modified`, `-`, or counts of each."""
    if not counts:
        return "-"
    if len(counts) == 1 and sum(counts.values()) == 1:
        return next(iter(counts))
    return ",".join(f"{outcome}:{counts[outcome]}" for outcome in sorted(counts))


def note_result_key(key: str) -> None:
    keys = _result_keys.get()
    if keys is not None and key not in keys:
        keys.append(key)


def result_keys() -> list[str]:
    return list(_result_keys.get() or [])
