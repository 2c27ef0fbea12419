"""The Redis broker: kombu keeps each queue as a list and what it has delivered but not
yet acknowledged in one hash (`unacked`), restored to its queue once older than the
visibility timeout. It has no dead-letter queues: a message no task can run is
recorded in the failure stream instead (see worker/consumer.py)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisconn
from ops.brokers.base import BrokerError, NotSupported, ParkedMessage, QueueDepth
from redisconn import RedisTarget

# kombu's Redis transport keeps delivered-but-unacknowledged messages here.
UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"
NO_DEAD_LETTERS = (
    "the Redis broker has no dead-letter queues: a message no task could run is recorded "
    "in the failure stream instead (apiworker failures list)"
)


class RedisBroker:
    kind = "redis"

    def __init__(self, target: RedisTarget, *, key_prefix: str = "") -> None:
        self.display_url = target.describe()
        self.key_prefix = key_prefix
        self._target = target
        try:
            self.client = redisconn.client(target, socket_connect_timeout=5)
        except ValueError as exc:
            raise BrokerError(f"invalid Redis URL {self.display_url}: {exc}") from exc

    def ping(self, timeout: float) -> str:
        # No retries: a health check reports the state now, within its timeout.
        quick = redisconn.client(
            self._target, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        try:
            quick.ping()
        except (redis.RedisError, OSError) as exc:
            raise BrokerError(f"{self.display_url}: {exc}") from exc
        finally:
            quick.close()
        return self.display_url

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        pipe = self.client.pipeline(transaction=False)
        for name in queues:
            pipe.llen(self.key_prefix + name)
        lengths = pipe.execute()
        unacked = self._unacked_by_queue()
        return [
            QueueDepth(name, int(length), unacked.get(name, 0), None)
            for name, length in zip(queues, lengths, strict=True)
        ]

    def unacked_total(self) -> tuple[int, int]:
        """Entries of the unacked hash and of its index (they differ only mid-update)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.key_prefix + UNACKED_HASH)
        pipe.zcard(self.key_prefix + UNACKED_INDEX)
        unacked, indexed = pipe.execute()
        return int(unacked), int(indexed)

    def _unacked_by_queue(self) -> Counter[str]:
        """Unacknowledged messages per queue, from the routing key kombu stores with each."""
        counts: Counter[str] = Counter()
        for _, raw in self.client.hscan_iter(self.key_prefix + UNACKED_HASH, count=500):
            try:
                _, _, routing_key = json.loads(raw)
            except (TypeError, ValueError):
                continue
            counts[str(routing_key)] += 1
        return counts

    def parked(self, queues: Sequence[str], limit: int) -> list[ParkedMessage]:
        raise NotSupported(NO_DEAD_LETTERS)

    def replay_parked(self, queues: Sequence[str], limit: int | None) -> list[ParkedMessage]:
        raise NotSupported(NO_DEAD_LETTERS)

    def close(self) -> None:
        self.client.close()
