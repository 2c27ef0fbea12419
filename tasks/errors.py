"""Errors of the task layer: permanent by nature, so never retried."""

from __future__ import annotations


class InvalidInput(ValueError):
    """A job's argument is of the wrong type, empty, too long or has illegal characters."""


class InvalidPayload(ValueError):
    """An upstream body decoded fine but lacks what the transform needs."""


class _MarkedExhausted(type):
    """`isinstance(exc, RetriesExhausted)` is true of an error marked by `mark`."""

    def __instancecheck__(cls, instance: object) -> bool:
        return getattr(instance, "retries_exhausted", False) is True


class RetriesExhausted(metaclass=_MarkedExhausted):
    """Matches a job's last transient error once its retries (or deferrals) are used up.

    The error keeps its own class (the failure record and the result name it); listed in
    a task's `throws`, Celery logs its end as expected, without a traceback.
    """

    @staticmethod
    def mark(exc: BaseException) -> BaseException:
        exc.retries_exhausted = True  # type: ignore[attr-defined]
        return exc
