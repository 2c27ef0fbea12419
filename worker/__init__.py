"""The Celery worker service; `celery -A worker ...` finds `worker.app`.

The app is imported on first use of `worker.app`, not with the package: `python -m
worker` imports this package before its `__main__` runs, and a green pool's monkey
patching (worker/__main__.py) must come before Celery, kombu, redis-py and the API
layer import the standard library's sockets and threads.

`worker.app` is always the Celery app, never the submodule of the same name that
defines it. Importing a submodule binds it on its package, which would replace the
name once anything imports `worker.app` the module first; the package's class takes
that binding and keeps the app (a module's `__class__` may be a `ModuleType`
subclass for exactly this, since Python 3.5).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


class _WorkerPackage(types.ModuleType):
    @property
    def app(self) -> Any:
        from worker.app import app as celery_app

        return celery_app

    @app.setter
    def app(self, value: Any) -> None:
        """The import system binding the `worker.app` submodule: the name stays the app."""


sys.modules[__name__].__class__ = _WorkerPackage
