"""Flower's task search index, parsing each job's kwargs text once instead of per event.

Flower (2.2) keeps a search index of the tasks it shows and rebuilds a task's entry at
each of its events, three a job here (received, started, succeeded). Each rebuild parses
the task's kwargs text again with `ast.literal_eval` (`flower.utils.search._kwargs_pairs`):
in a profile of `make run` with Flower attached, more than half of the index's cost and
~7% of the whole tree's CPU (docs/performance.md, "The start-up heap, and the targets
now"). A job's kwargs text does not change between its events, and jobs share a few
texts (`{}` for every fetch), so the parse is cached by its text: the same frozenset of
`key=value` pairs, computed once. Anything but a string goes to Flower's function as
before.

`celery -A worker flower` imports Flower's modules before it loads this app, so the app
wraps the function when it finds Flower's search module loaded; `python -m worker` has no
Flower and nothing is wrapped. If a Flower release drops the function, nothing is
wrapped either. tests/unit/test_flower_search.py holds the answers equal to Flower's own.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

SEARCH_MODULE = "flower.utils.search"
# Distinct kwargs texts kept; Celery cuts each text to `kwargsrepr` size, so this bounds
# the cache to well under a megabyte.
CACHED_TEXTS = 1024


def install() -> bool:
    """Wrap Flower's kwargs parser with a cache by text; False when there is none to wrap."""
    search = sys.modules.get(SEARCH_MODULE)
    original: Callable[[Any], Any] | None = getattr(search, "_kwargs_pairs", None)
    if search is None or original is None or getattr(original, "cached_by_text", False):
        return False
    cached = functools.lru_cache(maxsize=CACHED_TEXTS)(original)

    @functools.wraps(original)
    def kwargs_pairs(value: Any) -> Any:
        return cached(value) if isinstance(value, str) else original(value)

    kwargs_pairs.cached_by_text = True  # type: ignore[attr-defined]
    search._kwargs_pairs = kwargs_pairs  # type: ignore[attr-defined]
    return True
