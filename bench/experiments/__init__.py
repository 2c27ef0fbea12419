"""Measured what-ifs: the project's worker with one change patched in at start.

Each module re-exports the project's Celery app (`celery -A bench.experiments.NAME
worker` runs the same tasks, queues and settings) after applying a single change that
would belong in `apis/`, `tasks/` or `worker/`. Running one beside the unpatched worker in
the same invocation (`python -m bench --systems project,exp-gc`) shows what the change
is worth before anyone edits the product code. None of this runs in production.
"""
