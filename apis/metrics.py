"""Prometheus metrics of the API layer.

Defined at import and shared by every client in the process. Under Celery's prefork pool
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) aggregates them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

UPSTREAM_REQUESTS = Counter(
    "apiworker_upstream_requests",
    "Upstream HTTP requests sent, by service, method and outcome (status code or error).",
    ["service", "method", "status"],
)
UPSTREAM_LATENCY = Histogram(
    "apiworker_upstream_request_seconds",
    "Time from sending an upstream request to having its whole body.",
    ["service"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_RETRIES = Counter(
    "apiworker_upstream_retries",
    "Client-side retries of upstream requests (tenacity), by service.",
    ["service"],
)
REVALIDATIONS = Counter(
    "apiworker_revalidations",
    "Conditional fetches by service and outcome: not_modified (304) or modified (200).",
    ["service", "outcome"],
)
