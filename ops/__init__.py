"""Operator tooling around the worker: the `apiworker` CLI, `make run` and `make demo`.

Kept apart from `worker/`, which holds only the Celery app and what runs inside a worker
process: nothing here is imported by a worker, and these tools talk to the broker and the
results Redis from the outside, as an operator would.
"""
