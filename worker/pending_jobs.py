"""Jobs the threads pool holds but has not started, cancelled when the broker connection
is lost, so they do not run twice.

Celery hands each prefetched message to the threads pool at once: it waits in the
executor's queue for a free thread. When the connection is lost, the broker delivers
every unacknowledged message again (to this worker once it reconnects, or to another),
but Celery clears only its own bookkeeping (`Consumer.on_close`): the executor's queue
keeps them, and each would run a second time. Celery's
`worker_cancel_long_running_tasks_on_connection_loss` cannot help there: it cancels
*running* jobs through the pool, which the threads pool cannot do.

`PendingJobs` keeps the futures of the jobs submitted to the pool and, on a connection
loss, cancels those still pending: `Future.cancel()` succeeds only on a future that has
not started, so a job either runs here, whole, or is left to its redelivery. (The
executor itself cancels its queue this way when it shuts down, `cancel_futures=True`;
there is no public way to reach its queue before that.) A job already running finishes;
its acknowledgement is lost with the connection, and its redelivery is not run again
when it succeeded (`worker_deduplicate_successful_tasks`, brokers/amqp.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from celery.concurrency.thread import TaskPool


class PendingJobs:
    """The threads pool's submitted jobs that have not finished, by their futures."""

    def __init__(self, pool: TaskPool) -> None:
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()
        submit = pool.on_apply

        def on_apply(*args: Any, **kwargs: Any) -> Any:
            result = submit(*args, **kwargs)
            future: Future[Any] = result.f
            with self._lock:
                self._futures.add(future)
            future.add_done_callback(self._forget)
            return result

        # The pool's own `apply_async` calls `self.on_apply`: this instance's, from now on.
        pool.on_apply = on_apply

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def cancel_unstarted(self) -> int:
        """Cancel every job not started yet; how many were cancelled."""
        with self._lock:
            futures = list(self._futures)
        return sum(1 for future in futures if future.cancel())


def track(pool: Any) -> PendingJobs | None:
    """A `PendingJobs` for `pool` when it is the threads pool; None for the others (the
    prefork, gevent and eventlet pools cancel through Celery's own setting)."""
    return PendingJobs(pool) if isinstance(pool, TaskPool) else None
