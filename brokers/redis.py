"""Redis (`redis://`, `rediss://`, `sentinel://`): the default broker, one dependency.

Producers LPUSH to one list per queue, as kombu has always written them. The worker takes
messages with the reliable fetch of `brokers.redis_transport` (keys and scripts in
`brokers.redis_scripts`): each is recorded as in hand by the process that took it in the
same step, a dead process's messages return within BROKER_HEARTBEAT_TIMEOUT (plus a
heartbeat interval), and one whose deliveries keep ending without an acknowledgement is
parked in `{queue}.dead` after BROKER_DELIVERY_LIMIT of them. A message no task can run
is recorded in the failure stream and dropped (worker/consumer.py).

The operator's view reads the same keys: a queue's list, the holders' in-hand hashes,
and the dead lists.
"""

from __future__ import annotations

import base64
import hashlib
import json
from bisect import bisect
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis
from kombu import Exchange, Queue  # type: ignore[attr-defined]  # kombu exports them untyped
from kombu.transport.redis import PRIORITY_STEPS
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisconn
from brokers import base
from brokers import redis_scripts as scripts
from redisconn import RedisTarget

KIND = "redis"
PARKED_REASON = "delivery_limit"  # as RabbitMQ names it


def shape_countdown(seconds: float) -> float:
    """The worker holds a countdown itself on Redis: any length goes."""
    return seconds


def celery_conf(settings: base.BrokerSettings) -> dict[str, Any]:
    """The Celery settings of a Redis broker. CFG#broker-transport-options"""
    return {
        "broker_transport_options": {
            # A worker process whose heartbeat is older than this is dead: the next live
            # worker's heartbeat puts its messages back, or parks those whose deliveries
            # ended without an acknowledgement more than BROKER_DELIVERY_LIMIT times. A
            # worker whose own heartbeat is older than half of it judges nobody (a
            # paused Redis is not a dead fleet).
            "heartbeat_timeout": settings.broker_heartbeat_timeout,
            "heartbeat_interval": settings.broker_heartbeat_timeout / 5,
            "delivery_limit": settings.broker_delivery_limit,
            # The backstop for a worker alive but stuck: a message held longer than this
            # goes back to its queue. It must exceed the longest a delivered job can stay
            # unacknowledged (WorkerSettings.safe_visibility_timeout), or such a job runs
            # twice; checked every BROKER_RESTORE_INTERVAL seconds.
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.broker_restore_interval,
            # A socket timeout lets a worker notice a Redis that vanished without closing
            # the connection.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # Each queue has its own direct exchange and key: Celery would otherwise bind them
        # all to the default exchange with the same key, and a message could reach every
        # queue. CFG#task-queues
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in base.ALL_QUEUES
        ],
    }


def prepare_consumer(connection: Any) -> None:
    """Nothing to declare: a Redis queue is a list that exists once written."""


class RedisBroker:
    kind = KIND

    def __init__(
        self, target: RedisTarget, *, key_prefix: str = "", client: redis.Redis | None = None
    ) -> None:
        """`client`: one already made for `target` (tests give an in-memory one)."""
        self.display_url = target.describe()
        self.key_prefix = key_prefix
        self._target = target
        try:
            self.client = client or redisconn.client(target, socket_connect_timeout=5)
        except ValueError as exc:
            raise base.BrokerError(f"invalid Redis URL {self.display_url}: {exc}") from exc

    def ping(self, timeout: float) -> str:
        # No retries: a health check reports the state now, within its timeout.
        quick = redisconn.client(
            self._target, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        try:
            quick.ping()
        except (redis.RedisError, OSError) as exc:
            raise base.BrokerError(f"{self.display_url}: {exc}") from exc
        finally:
            quick.close()
        return self.display_url

    def depths(self, queues: Sequence[str]) -> list[base.QueueDepth]:
        """Ready counts every priority list of a queue; dead, every dead list (a message
        is parked under its base queue's name, but workers of an earlier release parked
        a priority list's message under that list's name)."""
        pipe = self.client.pipeline(transaction=False)
        for name in queues:
            for key in priority_keys(name):
                pipe.llen(self.key_prefix + key)
            for key in dead_lists(name):
                pipe.llen(self.key_prefix + key)
        lengths = iter(pipe.execute())
        held = self.in_hand()
        depths = []
        for name in queues:
            ready = sum(int(next(lengths)) for _ in PRIORITY_STEPS)
            dead = sum(int(next(lengths)) for _ in PRIORITY_STEPS)
            depths.append(base.QueueDepth(name, ready, held.get(name, 0), dead))
        return depths

    def in_hand(self) -> Counter[str]:
        """Messages taken and not yet acknowledged, per queue, over every holder (the
        queue is in each in-hand field's name: no message body is read)."""
        counts: Counter[str] = Counter()
        holders = self.client.zrange(self.key_prefix + scripts.HOLDERS, 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for holder in holders:
            pipe.hkeys(self.key_prefix + scripts.INHAND_PREFIX + _text(holder))
        for fields in pipe.execute() if holders else []:
            for field in fields:
                key = _text(field).split(":", 2)[2][len(self.key_prefix) :]
                counts[key.split("\x06\x16", 1)[0]] += 1
        return counts

    def parked(self, queues: Sequence[str], limit: int) -> list[base.ParkedMessage]:
        found: list[base.ParkedMessage] = []
        for name in queues:
            for dead in dead_lists(name):
                items = self.client.lrange(self.key_prefix + dead, 0, limit - len(found) - 1)
                found.extend(self._parked(name, item) for item in items)
                if len(found) >= limit:
                    return found
        return found

    def replay_parked(self, queues: Sequence[str], limit: int | None) -> list[base.ParkedMessage]:
        """Each message goes back to the list it was taken from: its queue's list for
        its priority (kombu's `{queue}\\x06\\x16{n}` above priority 0)."""
        replay = self.client.register_script(scripts.REPLAY)
        replayed: list[base.ParkedMessage] = []
        for name in queues:
            for dead_list in dead_lists(name):
                dead = self.key_prefix + dead_list
                while limit is None or len(replayed) < limit:
                    head = self.client.lindex(dead, 0)
                    if head is None:
                        break
                    target = self.key_prefix + priority_key(name, item_priority(head))
                    keys = [dead, target, self.key_prefix + scripts.PARKED_INFO]
                    deliveries = self._deliveries(head)
                    item = replay(keys=keys, args=[head])
                    if item is not None:  # else another replay took it: read the head again
                        replayed.append(parked_message(name, item, deliveries))
        return replayed

    def _parked(self, queue: str, item: Any) -> base.ParkedMessage:
        return parked_message(queue, item, self._deliveries(item))

    def _deliveries(self, item: Any) -> int:
        if item is None:
            return 0
        digest = hashlib.sha1(item if isinstance(item, bytes) else item.encode()).hexdigest()  # noqa: S324  # the key Redis's sha1hex wrote
        count = self.client.hget(self.key_prefix + scripts.PARKED_INFO, digest)
        return int(count) if count else 0

    def cluster(self, queues: Sequence[str]) -> base.ClusterView:
        raise base.NotSupported("a Redis broker has no cluster of its own (Sentinel: `health`)")

    def close(self) -> None:
        self.client.close()


def priority_key(queue: str, priority: int) -> str:
    """The list kombu's Redis transport writes a message of `priority` to (its
    `_q_for_pri`): the queue itself at the lowest step, else `{queue}\\x06\\x16{step}`."""
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, priority) - 1]
    return f"{queue}{scripts.PRIORITY_SEP}{step}" if step else queue


def priority_keys(queue: str) -> list[str]:
    """Every list of a queue, one per priority step, the queue itself first."""
    return [priority_key(queue, step) for step in PRIORITY_STEPS]


def dead_lists(queue: str) -> list[str]:
    """Every dead list of a queue: `{queue}.dead` first, then those of its priority
    lists (where workers of an earlier release parked their messages)."""
    return [base.dead_letter_queue(key) for key in priority_keys(queue)]


def item_priority(item: bytes | str) -> int:
    """A queue item's priority as kombu reads it (0 to 9; 0 when unreadable)."""
    try:
        priority = int(json.loads(item)["properties"]["priority"])
    except (TypeError, ValueError, KeyError):
        return 0
    return max(0, min(priority, 9))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parked_message(queue: str, item: bytes | str, deliveries: int) -> base.ParkedMessage:
    """What an operator needs of a parked queue item: task, id and arguments, when the
    item is kombu's JSON envelope of a Celery message; else what could be read."""
    headers: object = None
    payload: object = None
    try:
        envelope = json.loads(item)
        headers = envelope.get("headers")
        body = envelope.get("body", "")
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        payload = json.loads(body)
    except (TypeError, ValueError, AttributeError):
        pass
    return base.ParkedMessage.of_job(
        queue, headers, payload, deliveries=deliveries, reason=PARKED_REASON
    )
