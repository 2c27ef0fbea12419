"""What the operator CLI asks of a broker, whichever it is.

One small interface, one module per broker (as kombu has a transport per broker): the
commands never look at the URL scheme themselves. `ops.brokers.open_broker` picks the
implementation once, from the broker URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class BrokerError(Exception):
    """The broker could not be reached or refused what was asked; the message says why."""


class NotSupported(BrokerError):
    """This broker has no such thing (the message says where to look instead)."""


@dataclass(frozen=True)
class QueueDepth:
    """One queue's messages: waiting, delivered but unacknowledged, and dead-lettered.

    None means the broker cannot tell (a Redis broker has no dead-letter queues; RabbitMQ
    reports unacknowledged counts only through its management API).
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

    def close(self) -> None: ...
