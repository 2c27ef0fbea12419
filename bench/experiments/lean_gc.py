"""What-if: both the lean decode and the frozen start-up heap (see those two modules)."""

from __future__ import annotations

from bench.experiments import gc_freeze, lean_decode
from worker.app import app

__all__ = ["app", "gc_freeze", "lean_decode"]
