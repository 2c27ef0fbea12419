"""Every Prometheus metric of the service, defined once, here.

The API layer's (upstream requests, retries, revalidations, rate limits, circuits), the
tasks' (retries, failure records, owed events sent, freshness hits, single-flight waits)
and the worker's (jobs and their durations); the gauges read from Redis on scrape are in
`telemetry.backlog`. Defined at import and shared by everything in the process. Under
Celery's prefork pool prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
aggregates them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# The fleet-wide budget's waits and held-back calls (apis/budget.py).
RATE_LIMIT_WAITS = Counter(
    "apiworker_rate_limit_waits",
    "Requests that waited for a token of the shared rate limit, by service.",
    ["service"],
)
RATE_LIMIT_DEFERRALS = Counter(
    "apiworker_rate_limit_held_back",
    "Calls held back because the next token was further away than RATE_LIMIT_MAX_WAIT.",
    ["service"],
)

# The fleet-wide budget of each upstream (apis/budget.py). Gauges are per process;
# under the prefork pool the multiprocess mode says how processes combine.
BUDGET_RATE = Gauge(
    "apiworker_budget_rate",
    "The fleet's current rate for an upstream, requests/s, as this process last read it "
    "(0: unbounded, no limit configured or learnt).",
    ["service"],
    multiprocess_mode="max",
)
BUDGET_CONFIGURED_RATE = Gauge(
    "apiworker_budget_configured_rate",
    "The configured rate of an upstream (its ceiling), requests/s; 0: none configured.",
    ["service"],
    multiprocess_mode="max",
)
BUDGET_IN_FLIGHT = Gauge(
    "apiworker_budget_in_flight",
    "Requests in flight holding a permit of an upstream's concurrency limit.",
    ["service"],
    multiprocess_mode="livesum",
)
BUDGET_WAITING = Gauge(
    "apiworker_budget_waiting",
    "Calls waiting for their upstream's budget now, by job class (on_demand, bulk).",
    ["service", "job_class"],
    multiprocess_mode="livesum",
)
BUDGET_PAUSES = Counter(
    "apiworker_budget_pauses",
    "Upstream answers that paused the fleet (429, or 503 with Retry-After), by status.",
    ["service", "status"],
)
GUARD_FALLBACK = Gauge(
    "apiworker_guard_fallback",
    "1 while a guard (budget, breaker) of an upstream runs on local state because Redis "
    "is slow or away.",
    ["service", "guard"],
    multiprocess_mode="max",
)

# The circuit breakers (apis/breaker.py).
CIRCUIT_TRANSITIONS = Counter(
    "apiworker_circuit_transitions",
    "Circuit breaker state changes caused by this process, by service and new state.",
    ["service", "state"],
)
CIRCUIT_REJECTIONS = Counter(
    "apiworker_circuit_rejections",
    "Calls refused without a request because the circuit was open, by service.",
    ["service"],
)

# Celery-level retries and failure records (tasks/base.py, worker/consumer.py).
TASK_RETRIES = Counter("apiworker_task_retries", "Celery-level retries of jobs, by task.", ["task"])
FAILURES_RECORDED = Counter(
    "apiworker_failures_recorded",
    "Permanent job failures recorded: written to the failure stream, or kept by the worker "
    "until Redis takes them (apiworker_failures_buffered).",
    ["task", "error"],
)

# Change events a writer owed and a later job sent (results/store.py, `send_owed`): each
# one is a worker that died (or whose event failed) between a write and its event.
OWED_EVENTS_SENT = Counter(
    "apiworker_owed_events_sent",
    "Change events a result's metadata said were owed (their writer died before them), "
    "appended by a later job or the sweep, by kind.",
    ["kind"],
)

# Freshness and single flight (results/single_flight.py).
FRESHNESS_HITS = Counter(
    "apiworker_freshness_hits",
    "Jobs answered from a stored result younger than the freshness window.",
    ["kind"],
)
SINGLE_FLIGHT_WAITS = Counter(
    "apiworker_single_flight_waits",
    "Jobs that waited for another job fetching the same key.",
    ["kind"],
)

# Results under stress (results/lease.py, results/failures.py).
LEASES_LOST = Counter(
    "apiworker_single_flight_leases_lost",
    "Single-flight leases lost while their fetch ran: taken (a renewal found another "
    "holder or none) or expired (not renewed in time: Redis slow or away).",
    ["reason"],
)
FAILURES_BUFFERED = Counter(
    "apiworker_failures_buffered",
    "Failure records kept in the process because Redis did not answer (written later).",
)
FAILURES_DROPPED = Counter(
    "apiworker_failures_dropped",
    "Failure records lost because the process's buffer of unwritten ones was full.",
)

# One per job outcome (worker/observability.py).
JOBS = Counter("apiworker_jobs", "Finished jobs by task and final state.", ["task", "state"])
JOB_SECONDS = Histogram(
    "apiworker_job_seconds",
    "Wall time of one job execution, by task.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
