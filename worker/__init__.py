"""The Celery worker service; `celery -A worker ...` finds `worker.app`.

The app is imported on first use of `worker.app`, not with the package: `python -m
worker` imports this package before its `__main__` runs, and a green pool's monkey
patching (worker/__main__.py) must come before Celery, kombu, redis-py and the API
layer import the standard library's sockets and threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from worker.app import app as celery_app

    # Importing the submodule bound `worker.app` to it; the name is the Celery app.
    globals()["app"] = celery_app
    return celery_app
