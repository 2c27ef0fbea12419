"""The project's worker unchanged, for what-ifs that only change settings (extra_env)."""

from __future__ import annotations

from worker.app import app

__all__ = ["app"]
