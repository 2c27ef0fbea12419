"""What a sender shares with the worker, so a job is routed and decoded as the worker
expects: the task modules, serialisation and routes (never the connection URLs).

The worker's app (`worker/app.py`) and the operator's sender (`ops/cli/base.py`) both
take them from here; neither this module nor the task registry it names reads a setting
when imported, so `apiworker --help` works whatever the environment holds.
"""

from __future__ import annotations

from typing import Any

from apis.budget import BULK
from brokers import DEFAULT_QUEUE
from upstreams import all_upstreams

# A job's class for its upstream's budget: "bulk" or "on_demand". A producer marks a job
# bulk with Celery's own `headers` option (`send_task(name, args, headers={CLASS_HEADER:
# "bulk"})`); a job without it is on-demand unless its task is bulk by nature.
CLASS_HEADER = "apiworker_class"
#: What a fan-out child and a beat entry are sent with.
BULK_HEADERS = {CLASS_HEADER: BULK}

#: The task modules of every upstream in the registry (upstreams/), Celery's `include`.
TASK_MODULES: tuple[str, ...] = tuple(upstream.tasks for upstream in all_upstreams())

SENDER_CONF: dict[str, Any] = {
    # JSON only: a pickled message could run arbitrary code on the worker, so any other
    # content type is refused by kombu before a task sees it. CFG#accept-content
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    # One queue per upstream, so a slow upstream cannot starve the others; the default
    # queue is consumed too, so a job sent by name without routing is never stranded.
    # CFG#task-queues, CFG#task-routes
    "task_default_queue": DEFAULT_QUEUE,
    "task_routes": dict(upstream.route for upstream in all_upstreams()),
    # The task name and arguments stored with each result. CFG#result-extended
    "result_extended": True,
}
