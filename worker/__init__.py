"""The Celery worker service; `celery -A worker ...` finds `worker.app`."""

# Before Celery and the app: redis-py, kombu and tenacity without the optional packages
# a worker never uses (worker/optional_imports.py).
import worker.optional_imports  # noqa: F401  # isort: skip
from worker.app import app

__all__ = ["app"]
