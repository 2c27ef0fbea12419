"""Durable before acknowledged: a result write waits for a replica when there is one.

Redis replicates asynchronously, so a master that dies can take with it writes it has
already answered. A job acknowledged on such an answer (on RabbitMQ the acknowledgement
itself is durable) would leave no result and no failure record. `WAIT 1 <ms>` in the
same round trip as the write (a pipeline: WAIT counts the writes of its own
connection) holds the answer until one replica has the write; a timeout raises
`ReplicaNotConfirmed`, a transient Redis error, so the job is retried, not acknowledged.

A Redis without replicas pays nothing: whether the master has any is read from
`INFO replication` (`connected_slaves`; on a Redis Cluster, every master's, and the
wait is on when each has one) and kept for `RECHECK_SECONDS`, so a single
Redis costs one `INFO` every few seconds per process, not a round trip per job. WAIT is
Redis's own answer to this; `min-replicas-to-write` on the master is the server-side
complement (it refuses writes when no replica follows), documented in the README.
"""

from __future__ import annotations

import threading
import time

import redis
from redis.cluster import RedisCluster

#: How long the answer of `INFO replication` is trusted.
RECHECK_SECONDS = 5.0


class ReplicaNotConfirmed(redis.exceptions.TimeoutError):
    """No replica acknowledged a result write in time: the job must not be acknowledged."""


class ReplicaWait:
    """Whether writes to one Redis must wait for a replica, and for how long.

    `timeout_ms` 0 turns the wait off (RESULT_REPLICA_WAIT_MS=0).
    """

    def __init__(self, client: redis.Redis, timeout_ms: int) -> None:
        self.redis = client
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._replicas = 0
        self._checked = float("-inf")

    def needed(self) -> bool:
        """True when the master had a replica at the last check (done every few seconds).

        A failed check keeps the last answer: the write that follows meets the same
        Redis error and is retried by its job anyway.
        """
        if self.timeout_ms <= 0:
            return False
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            with self._lock:
                if now - self._checked >= RECHECK_SECONDS:
                    self._checked = now
                    try:
                        self._replicas = self._fewest_replicas()
                    except redis.RedisError:
                        return self._replicas > 0
        return self._replicas > 0

    def _fewest_replicas(self) -> int:
        """The replicas of the master with fewest (on a single Redis, of the master)."""
        if isinstance(self.redis, RedisCluster):
            replies = self.redis.info("replication", target_nodes=RedisCluster.PRIMARIES)
            counts = [int(info.get("connected_slaves", 0)) for info in replies.values()]
            return min(counts, default=0)
        info = self.redis.info("replication")
        return int(info.get("connected_slaves", 0))

    def forget(self) -> None:
        """Ask `INFO replication` again at the next write."""
        with self._lock:
            self._checked = float("-inf")

    def check(self, acknowledged: object) -> None:
        """Raise `ReplicaNotConfirmed` unless WAIT's answer counts at least one replica."""
        if isinstance(acknowledged, Exception):
            raise acknowledged
        if not isinstance(acknowledged, int) or acknowledged < 1:
            # The replica may be gone for good (a failover left the new master alone):
            # the next write asks `INFO replication` again instead of trusting the cache.
            self.forget()
            raise ReplicaNotConfirmed(
                f"no replica acknowledged the write within {self.timeout_ms} ms"
            )
