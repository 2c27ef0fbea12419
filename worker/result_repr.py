"""The text of a job's return value that Celery's tracer makes on every success.

Celery's tracer (`celery.app.trace`) computes `saferepr(result, resultrepr_maxsize)` for
each job that succeeds, whether or not anything reads it: it feeds the `task-succeeded`
event (Flower's result column) and Celery's "succeeded" INFO line, which this worker
logs only at DEBUG. `saferepr` is a pure-Python streaming repr, made for arbitrary
objects (recursive, huge, with hostile `__repr__`): ~45 µs for a five-field result dict
on this host, about 3% of a small job's CPU (docs/performance.md).

The tasks here return JSON-shaped values (dicts with string keys, lists, strings,
numbers, booleans, None). For those, `repr` gives the same text as `saferepr` when the
value is within `saferepr`'s nesting limit, its strings need no escapes, and the text
fits in `maxlen`; then the builtin's text is returned (a few µs), else `saferepr`'s.
`tests/unit/test_result_repr.py` checks the two agree.

Installed by replacing the name `saferepr` in `celery.app.trace`, a Celery internal:
pyproject.toml bounds Celery below 5.8, and the test fails if the tracer stops using it.
"""

from __future__ import annotations

from typing import Any

from celery.app import trace as celery_trace
from celery.utils.saferepr import saferepr

#: `saferepr`'s default nesting limit: containers deeper than this become `...`.
MAX_LEVELS = 3
_SCALARS = frozenset({int, float, bool, type(None)})


def _plain_text(text: str) -> bool:
    """A string whose repr is itself in single quotes, as `saferepr` writes it."""
    return text.isprintable() and "'" not in text and "\\" not in text


def _json_shaped(value: Any, level: int) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is str:
        return _plain_text(value)
    if level >= MAX_LEVELS:
        return False
    if kind is dict:
        return all(
            type(key) is str and _plain_text(key) and _json_shaped(item, level + 1)
            for key, item in value.items()
        )
    if kind is list:
        return all(_json_shaped(item, level + 1) for item in value)
    return False


def result_repr(
    value: Any, maxlen: int | None = None, maxlevels: int = MAX_LEVELS, seen: Any = None
) -> str:
    """`saferepr(value, maxlen, maxlevels, seen)`'s text, by the builtin `repr` when the
    value is JSON-shaped and its text fits (see the module docstring)."""
    if maxlevels == MAX_LEVELS and seen is None and _json_shaped(value, 0):
        text = repr(value)
        if maxlen is None or len(text) <= maxlen:
            return text
    result: str = saferepr(value, maxlen, maxlevels, seen)
    return result


def install() -> None:
    """Make Celery's tracer use `result_repr` for every job's return value."""
    celery_trace.saferepr = result_repr
