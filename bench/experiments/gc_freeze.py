"""What-if: freeze the start-up heap and collect the young generation less often.

Decoding one ~260 KB Pokémon record allocates tens of thousands of dicts and lists that
stay alive until the job ends, so they are promoted to the oldest generation and keep
triggering full collections, each of which walks every object of the process (Celery,
kombu, pydantic, the other threads' records). `gc.freeze()` once the worker is ready
takes the start-up heap out of those walks; a larger generation-0 threshold promotes
fewer short-lived objects. The change in the product would be the same signal handler in
`worker/observability.py` (or a small `worker/tuning.py`).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from celery.signals import worker_ready

from worker.app import app

THRESHOLD0 = int(os.environ.get("BENCH_GC_THRESHOLD0", "50000"))


@worker_ready.connect  # type: ignore[untyped-decorator]
def _freeze_heap(**_kwargs: Any) -> None:
    gc.collect()
    gc.freeze()
    _first, second, third = gc.get_threshold()
    gc.set_threshold(THRESHOLD0, second, third)


__all__ = ["app"]
