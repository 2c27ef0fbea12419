"""The Celery worker service; `celery -A worker ...` finds `worker.app`."""

from worker.app import app

__all__ = ["app"]
