"""What a task needs at run time, built once per process: settings, Redis and the store."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

import redisconn
from results.failures import FailureBuffer
from results.keys import Keys
from results.store import ResultStore
from settings import WorkerSettings, get_settings

RESULT_WRITE_RETRIES = 8
CLUSTER_WRITE_RETRIES = 24


@dataclass(frozen=True)
class Runtime:
    settings: WorkerSettings
    store: ResultStore
    #: Failure records kept while Redis cannot take them (results/failures.py).
    failures: FailureBuffer = field(default_factory=lambda: FailureBuffer(1000))

    @classmethod
    def build(cls, settings: WorkerSettings, client: redis.Redis | None = None) -> Runtime:
        """The runtime of `settings`; a given `client` (tests) serves leases too."""
        lease_client = None if client is not None else cls.lease_client(settings)
        client = client or redisconn.client(
            settings.state_redis,
            health_check_interval=30,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
            # A write that meets a vanished master is sent again after a reconnect, which
            # (with Sentinel) asks for the new master: up to about ten seconds, enough for
            # a restart or a failover with a short down-after, before the job's own retry.
            retry=cls.write_retry(settings),
        )
        store = ResultStore(
            client,
            Keys(settings.result_key_prefix, settings.events_partitions),
            events_maxlen=settings.events_stream_maxlen,
            failures_maxlen=settings.failures_stream_maxlen,
            lease_client=lease_client,
            replica_wait_ms=settings.result_replica_wait_ms,
            failure_max_bytes=settings.failure_record_max_bytes,
        )
        return cls(
            settings=settings, store=store, failures=FailureBuffer(settings.failure_buffer_size)
        )

    @staticmethod
    def write_retry(settings: WorkerSettings) -> Retry:
        """How a write that met a vanished master is sent again: for about ten seconds in
        all, enough for a restart or a failover, before the job's own retry.

        On a Redis Cluster each attempt after a connection error first asks a live node
        for the slots again (redis-py's `RedisCluster`), so short steps find the promoted
        replica within half a second of its promotion instead of up to two.
        """
        if settings.redis_cluster_nodes:
            return Retry(ExponentialWithJitterBackoff(base=0.1, cap=0.5), CLUSTER_WRITE_RETRIES)
        return Retry(ExponentialWithJitterBackoff(base=0.2, cap=2.0), RESULT_WRITE_RETRIES)

    @staticmethod
    def lease_client(settings: WorkerSettings) -> redis.Redis:
        """The client of lease renewals: a short timeout and no retries. A renewal
        answered after its lease ran out is worth nothing, and one sent again after a
        timeout would extend a lease counted from the first (results/lease.py)."""
        return redisconn.client(
            settings.state_redis,
            health_check_interval=30,
            socket_timeout=settings.lease_renewal_timeout,
            socket_connect_timeout=settings.lease_renewal_timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process-wide runtime; redis-py's pool is thread-safe and re-made after fork."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime.build(get_settings().worker)
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Replace the runtime (tests use a fakeredis-backed one)."""
    global _runtime
    with _lock:
        _runtime = runtime
