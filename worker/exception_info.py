"""One copy of each function's code positions in Celery's exception info, not one a retry.

Every retry, deferral and failure of a task makes Celery build billiard's
`ExceptionInfo`, a picklable copy of the traceback (celery/app/trace.py). On Python 3.11
and later billiard copies, for each frame, the position of every bytecode instruction
of its function (`_Code`, `list(code.co_positions())`), so that the copy can still be
formatted with the new carets. The first frame is always Celery's own `trace_task`, a
function of 2,341 instructions: about 200 KB of small tuples for that frame alone, and
300-400 KB for a job's whole stack.

A thread pool never pickles that copy, and the positions of a function never change,
yet a burst of deferrals (an upstream's 429, a fleet's slow start) built them in up to
32 threads at once: some 12 MB of small objects alive together. Python's small-object
heap grew by as many arenas and, once they were freed, could not give most of them back,
because later long-lived objects were placed among them. A worker that had deferred
jobs once stayed about 14 MiB higher for its whole life (docs/performance.md, "One copy
of the code positions").

Here every `_Code` shares one tuple of positions per code object, made the first time
that function appears in a traceback: the same values billiard would have listed, so
the copy still formats and pickles the same, and a burst of deferrals allocates only
the frames' small records. Neither Celery nor billiard has a switch for it; the patch
wraps billiard's own `_Code.__init__` (pinned in pyproject.toml) and gives it a view of
the code object whose `co_positions` reads the shared tuple. Installed by importing
this module, which `worker/app.py` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from types import CodeType
from typing import Any

from billiard import einfo

# Far more distinct functions than ever appear in a worker's tracebacks; the bound only
# keeps a process that formats generated code from holding every code object it met.
POSITIONS_CACHED = 4096

Position = tuple[int | None, int | None, int | None, int | None]


@lru_cache(maxsize=POSITIONS_CACHED)
def shared_positions(code: CodeType) -> tuple[Position, ...]:
    """The positions of `code`'s instructions, built once per code object."""
    return tuple(code.co_positions())


class _SharedPositionsCode:
    """A code object as billiard's `_Code` reads it, with the shared positions."""

    __slots__ = ("_code",)

    def __init__(self, code: CodeType) -> None:
        self._code = code

    def __getattr__(self, name: str) -> Any:
        return getattr(self._code, name)

    def co_positions(self) -> Iterator[Position]:
        return iter(shared_positions(self._code))


def _sharing(billiard_init: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def init(self: Any, code: CodeType) -> None:
        billiard_init(self, _SharedPositionsCode(code))
        self._co_positions = shared_positions(code)  # the list it made, by the tuple

    init.__wrapped__ = billiard_init  # type: ignore[attr-defined]
    return init


if not hasattr(einfo._Code.__init__, "__wrapped__"):  # once per process
    einfo._Code.__init__ = _sharing(einfo._Code.__init__)
