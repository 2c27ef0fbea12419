"""Process-level tuning of the worker, applied when the app is built and through signals.

Everything allocated at start-up (Celery, kombu, the app, every imported module) lives
as long as the process. `gc.freeze()` moves it out of the collector's view, so the
collections that decoding and transforming upstream bodies trigger do not walk it again
and again (measured in docs/performance.md), and a prefork child does not dirty those
pages when the collector would otherwise touch them.

glibc's malloc gives each thread that allocates concurrently an arena of its own, up to
eight per core: sixteen here, for sixteen pool threads. Every arena keeps the freed
buffers of the ~300 KB bodies its thread read, so a threads pool's resident memory grows
with its thread count, not with its work. Two arenas serve this I/O-bound pool as well
(the GIL serialises most allocation anyway) and cap that growth; measured in
docs/performance.md. An operator's MALLOC_ARENA_MAX, read by glibc itself, wins.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Any

from celery.signals import worker_ready

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas for this process; False where that is not possible."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS))


limit_malloc_arenas()


@worker_ready.connect
def freeze_startup_heap(**_: Any) -> None:
    gc.collect()
    gc.freeze()
