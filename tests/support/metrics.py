"""A metric's value as this process's Prometheus registry holds it, for tests that count."""

from __future__ import annotations

from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    """The sample `name` with `labels` (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
