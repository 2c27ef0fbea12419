"""What a task needs at run time, built once per process: settings, Redis and the store."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

import redisconn
from settings import WorkerSettings, get_worker_settings
from tasks.keys import Keys
from tasks.store import ResultStore

RESULT_WRITE_RETRIES = 8


@dataclass(frozen=True)
class Runtime:
    settings: WorkerSettings
    store: ResultStore

    @classmethod
    def build(cls, settings: WorkerSettings, client: redis.Redis | None = None) -> Runtime:
        client = client or redisconn.client(
            settings.redis,
            health_check_interval=30,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
            # A write that meets a vanished master is sent again after a reconnect, which
            # (with Sentinel) asks for the new master: up to about ten seconds, enough for
            # a restart or a failover with a short down-after, before the job's own retry.
            retry=Retry(ExponentialWithJitterBackoff(base=0.2, cap=2.0), RESULT_WRITE_RETRIES),
        )
        store = ResultStore(
            client,
            Keys(settings.result_key_prefix),
            events_maxlen=settings.events_stream_maxlen,
            failures_maxlen=settings.failures_stream_maxlen,
        )
        return cls(settings=settings, store=store)


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process-wide runtime; redis-py's pool is thread-safe and re-made after fork."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime.build(get_worker_settings())
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Replace the runtime (tests use a fakeredis-backed one)."""
    global _runtime
    with _lock:
        _runtime = runtime
