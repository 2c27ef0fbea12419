"""Process-level tuning of the worker, applied through Celery's signals.

Everything allocated at start-up (Celery, kombu, the app, every imported module) lives
as long as the process. `gc.freeze()` moves it out of the collector's view, so the
collections that decoding and transforming upstream bodies trigger do not walk it again
and again (measured in docs/performance.md), and a prefork child does not dirty those
pages when the collector would otherwise touch them.
"""

from __future__ import annotations

import gc
from typing import Any

from celery.signals import worker_ready


@worker_ready.connect
def freeze_startup_heap(**_: Any) -> None:
    gc.collect()
    gc.freeze()
