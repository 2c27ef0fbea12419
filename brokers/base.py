"""What the worker, the gauges and the operator CLI ask of a broker, whichever it is.

One small interface, one module per broker (as kombu has a transport per broker, and
Celery a backend per result store): nothing outside this package looks at the URL
scheme. `brokers.broker_module` picks the module once, from the broker URL; each module
gives the Celery settings that make its guarantees hold (`celery_conf`), what its
consumer prepares on connecting (`prepare_consumer`), how it shapes a countdown, and the
operator's view (`Broker`: depths, parked messages, replay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from upstreams import queue_names

#: One queue per upstream, named by the upstream registry.
QUEUES = queue_names()
DEFAULT_QUEUE = "celery"
ALL_QUEUES = (*QUEUES, DEFAULT_QUEUE)
#: A queue's parked messages: RabbitMQ's `{queue}.dead` quorum queue, Redis's list.
DEAD_LETTER_SUFFIX = ".dead"


def dead_letter_queue(name: str) -> str:
    return f"{name}{DEAD_LETTER_SUFFIX}"


class BrokerSettings(Protocol):
    """The worker settings a broker module reads (WorkerSettings has them all)."""

    @property
    def broker_url(self) -> str: ...
    @property
    def visibility_timeout(self) -> int: ...
    @property
    def broker_restore_interval(self) -> int: ...
    @property
    def broker_heartbeat_timeout(self) -> float: ...
    @property
    def broker_delivery_limit(self) -> int: ...


class BrokerModule(Protocol):
    """What a broker module (`brokers.redis`, `brokers.amqp`) gives the worker: the type
    `brokers.broker_module` returns, so a module missing one of these names fails mypy
    rather than a worker at start. Modules, not classes, because each broker's part is
    stateless module-level configuration; a Protocol lets mypy check a module against it
    (PEP 544), as kombu's `Transport` base class does for its transports."""

    #: "redis" or "amqp".
    @property
    def KIND(self) -> str: ...  # noqa: N802  # the module-level constant's name

    def shape_countdown(self, seconds: float) -> float:
        """The countdown as this broker can hold it (RabbitMQ rounds up to whole seconds)."""
        ...

    def celery_conf(self, settings: BrokerSettings) -> dict[str, Any]:
        """The Celery settings that make this broker's guarantees hold."""
        ...

    def prepare_consumer(self, connection: Any) -> None:
        """What the consumer declares each time it connects, before it consumes."""
        ...


class BrokerError(Exception):
    """The broker could not be reached or refused what was asked; the message says why."""


class NotSupported(BrokerError):
    """This broker has no such thing (the message says where to look instead)."""


@dataclass(frozen=True)
class QueueDepth:
    """One queue's messages: waiting, delivered but unacknowledged, and parked.

    None means the broker cannot tell (RabbitMQ reports unacknowledged counts only
    through its management API).
    """

    name: str
    ready: int
    unacked: int | None
    dead: int | None


@dataclass(frozen=True)
class ParkedMessage:
    """A job the broker parked after too many deliveries, or that no task could run."""

    queue: str
    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    deliveries: int
    reason: str

    @classmethod
    def of_job(
        cls, queue: str, headers: object, payload: object, *, deliveries: int, reason: str
    ) -> ParkedMessage:
        """What an operator needs of a parked job, read as Celery's message protocol 2
        lays it out on either broker: the task and its id in the headers, the body
        `[args, kwargs, embed]`. Whatever is not so (an unreadable body is why some
        messages are parked) shows as `?` or empty, never an error."""
        found = headers if isinstance(headers, Mapping) else {}
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if isinstance(payload, list | tuple) and len(payload) >= 2:
            try:
                args, kwargs = list(payload[0]), dict(payload[1])
            except (TypeError, ValueError):
                args, kwargs = [], {}
        return cls(
            queue=queue,
            task=str(found.get("task", "?")),
            task_id=str(found.get("id", "")),
            args=args,
            kwargs=kwargs,
            deliveries=deliveries,
            reason=reason,
        )


@dataclass(frozen=True)
class NodeState:
    """One node of a broker cluster, as its peers see it."""

    name: str
    running: bool


@dataclass(frozen=True)
class QueueReplicas:
    """Where a replicated queue lives: its member nodes, those online, its leader, the
    policy in effect on it (None: no policy, so no delivery limit or dead-lettering) and
    what that policy, merged with any operator policy, really sets on it."""

    name: str
    members: tuple[str, ...]
    online: tuple[str, ...]
    leader: str | None
    policy: str | None = None
    effective: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterView:
    """A broker cluster's nodes and its queues' replicas."""

    nodes: tuple[NodeState, ...]
    queues: tuple[QueueReplicas, ...]

    @property
    def down(self) -> list[str]:
        return [node.name for node in self.nodes if not node.running]


class Broker(Protocol):
    """The broker as the operator sees it."""

    #: "redis" or "amqp".
    kind: str
    #: The broker URL with its password masked.
    display_url: str

    def ping(self, timeout: float) -> str:
        """Check the broker over its own protocol; a line of detail, or `BrokerError`."""
        ...

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Ready, unacknowledged and dead-lettered messages of each queue."""
        ...

    def parked(self, queues: Sequence[str], limit: int) -> list[ParkedMessage]:
        """Parked messages, oldest first, left where they are."""
        ...

    def replay_parked(self, queues: Sequence[str], limit: int | None) -> list[ParkedMessage]:
        """Send up to `limit` parked messages (all when None) back to their queue, each
        one published (and confirmed) before it leaves the dead-letter queue."""
        ...

    def cluster(self, queues: Sequence[str]) -> ClusterView:
        """The cluster's nodes and each queue's replicas, or `NotSupported` (a broker
        without replicas, or no way to ask)."""
        ...

    def close(self) -> None: ...
