"""Three libraries' optional extras, kept out of a worker process's start-up heap.

A worker process imports redis-py, kombu and tenacity, and each of them, at import time,
tries an optional package and wires it in when it is installed:

- redis-py 8 (`redis.observability`) imports OpenTelemetry's metrics API and SDK
  (~75 modules, about 1.7 MiB) for its own metrics, which stay off until a program calls
  `redis.observability`'s `init`; the service never does (its traces, when an exporter is
  configured, are the tracer SDK's, loaded then: telemetry/otel.py).
- kombu (`kombu.serialization.register_yaml`) imports PyYAML to offer a YAML serializer;
  the worker accepts JSON only (`accept_content`, tasks/messages.py), so a YAML message
  is refused before any decoder runs, with or without it.
- tenacity imports tornado, when Flower's extra installed it, to retry tornado
  coroutines; the API layer's retries (apis/retry.py) are plain calls.

Together about 3 MiB of every worker process's 76 MiB budget (docs/performance.md,
"Memory per worker process"). None of the three libraries has a switch for it, so this
module imports them first with those optional names marked missing (`sys.modules[name]
= None`, which the import system documents as "raise ImportError"): each takes its own
"not installed" branch. The marks are removed at once, so any later `import yaml` (the
command line's manifests, a test) loads it as usual. Imported first by `worker/app.py`,
before Celery (which imports kombu), and by `python -m worker` right after a green pool's
monkey patching (worker/__main__.py), never before it; tests/unit/test_worker_entry_point.py
fails if a worker process loads any of them again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Each library, and the optional package it would load but the worker never uses.
OPTIONAL = {
    "redis": ("opentelemetry.metrics", "opentelemetry.sdk.metrics"),
    "kombu.serialization": ("yaml",),
    "tenacity": ("tornado",),
}


@contextmanager
def absent(names: tuple[str, ...]) -> Iterator[None]:
    """Inside the block, importing any of `names` not yet imported raises ImportError."""
    marked = [name for name in names if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in marked:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def import_without_extras() -> None:
    """Import each library of `OPTIONAL` without its optional package (a no-op once loaded)."""
    for module, extras in OPTIONAL.items():
        if module not in sys.modules:
            with absent(extras):
                __import__(module)


import_without_extras()
