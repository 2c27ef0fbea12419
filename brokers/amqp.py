"""RabbitMQ (`amqp://`, `amqps://`, or a failover list of them separated by `;`, one
per node of a cluster): several hosts. Every queue is a quorum queue (replicated on a
cluster), every publish is confirmed, a dead worker's jobs are
redelivered as soon as its connection drops, and a message delivered
`BROKER_DELIVERY_LIMIT` times without an acknowledgement (one that keeps killing its
workers) is dead-lettered to `{queue}.dead` instead of looping forever.
(Celery's RabbitMQ page:
https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html)

Queues are declared as a stock Celery producer declares them (`x-queue-type: quorum`
and nothing else), so any producer may declare them too; the delivery limit,
dead-lettering and overflow come from one RabbitMQ policy per queue (`queue_policies`),
which `apiworker rabbitmq apply-policy` sets through the management API.

The operator's view goes over AMQP itself: queue depths from passive declares, parked
messages from each queue's `.dead` quorum queue. AMQP has no way to ask how many
messages are delivered but unacknowledged, nor which nodes of a cluster are down and
where each queue's replicas are; RabbitMQ's management API has (brokers/rabbitmq_api.py),
so those are filled when `RABBITMQ_MANAGEMENT_URL` names it
(e.g. http://user:password@rabbitmq:15672, or one URL per node separated by `;`) and
left unknown otherwise.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from amqp.exceptions import AMQPError
from celery.app.amqp import AMQP
from kombu import Connection, Exchange, Producer, Queue  # type: ignore[attr-defined]
from kombu.exceptions import KombuError

from brokers.base import (
    ALL_QUEUES,
    BrokerError,
    BrokerSettings,
    ClusterView,
    NotSupported,
    ParkedMessage,
    QueueDepth,
    dead_letter_queue,
)
from brokers.rabbitmq_api import ManagementApi
from telemetry.redact import masked_url

KIND = "amqp"
#: Where RabbitMQ parks messages it will not deliver again.
DEAD_LETTER_EXCHANGE = "apiworker.dead"
#: The topic exchange every queue is bound to under its own name (see `amqp_queue`).
JOBS_EXCHANGE = "apiworker.jobs"
#: Each queue's policy is `apiworker-{queue}`, at this priority.
POLICY_PREFIX = "apiworker-"
POLICY_PRIORITY = 10


def shape_countdown(seconds: float) -> float:
    """RabbitMQ's native delayed delivery counts in whole seconds (and Celery refuses a
    countdown below one there), so countdowns are rounded up."""
    return float(math.ceil(seconds)) if seconds > 0 else seconds


def amqp_queue(name: str) -> Queue:
    """A durable quorum queue, declared with nothing but its type: exactly what a stock
    producer declares (Celery with `task_default_queue_type = "quorum"`, celery-node in
    a vhost whose default queue type is quorum), since RabbitMQ refuses a redeclaration
    whose arguments differ. Its delivery limit and dead-lettering come from a policy
    (`queue_policies`, applied by `apiworker rabbitmq apply-policy`).

    Bound to the topic exchange `apiworker.jobs` under its own name: Celery's native
    delayed delivery (countdowns and retries on quorum queues) routes only through topic
    or fanout exchanges. A stock producer's own direct exchange named after the queue
    (Celery's default) is never declared by the worker, so both bindings coexist.
    """
    return Queue(
        name,
        Exchange(JOBS_EXCHANGE, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


#: What the application user (workers, producers, the CLI's AMQP commands) may configure,
#: write and read on its vhost, as one RabbitMQ permission pattern: its queues and their
#: `.dead` queues, its two exchanges, Celery's delayed-delivery exchanges and queues,
#: Celery's remote control (`*.celery.pidbox`, `reply.celery.pidbox` and its reply
#: queues) and events (`celeryev*`), the default exchange (replays publish to it), and
#: the exchange `default` that a celery-node producer declares.
#: That user needs no tags: the management API is another user's (docs/reliability.md).
APP_PERMISSION_PATTERN = (
    r"^(apiworker\.(jobs|dead)"
    rf"|({'|'.join(re.escape(name) for name in ALL_QUEUES)})(\.dead)?"
    r"|celery_delayed_([0-9]+|delivery)"
    r"|celeryev(\..+)?"
    r"|(.+\.)?(reply\.)?celery\.pidbox"
    r"|amq\.default|default)$"
)


def queue_policies(
    delivery_limit: int,
    queues: Sequence[str] = ALL_QUEUES,
    *,
    consumer_timeout: int | None = None,
) -> dict[str, Any]:
    """The policy of each queue, by policy name: what its declaration no longer says.

    One policy per queue, because a policy names one dead-letter routing key, and each
    queue's parked messages go to its own `.dead` queue. `consumer_timeout` (seconds),
    when given, becomes the queue's own `consumer-timeout`, which RabbitMQ 3.12 and later
    take from a policy (3.10 and 3.11 refuse the key: their node-wide setting applies).
    """
    extra = {} if consumer_timeout is None else {"consumer-timeout": consumer_timeout * 1000}
    return {
        f"{POLICY_PREFIX}{name}": {
            "pattern": f"^{re.escape(name)}$",
            "apply-to": "queues",
            # Above an operator's catch-all policies (priority 0): one policy applies.
            "priority": POLICY_PRIORITY,
            "definition": {
                "delivery-limit": delivery_limit,
                "dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "dead-letter-routing-key": name,
                # Dead-lettered copies are confirmed by the dead-letter queue before they
                # leave this one: a parked message is never lost on the way.
                # (RabbitMQ requires reject-publish overflow for that strategy.)
                "dead-letter-strategy": "at-least-once",
                "overflow": "reject-publish",
                # A new queue's leader goes to the node with the fewest leaders, not to
                # the node its declaring client is connected to (RabbitMQ 3.10+).
                "queue-leader-locator": "balanced",
                **extra,
            },
        }
        for name in queues
    }


#: The first RabbitMQ release that takes `consumer-timeout` from a policy.
POLICY_CONSUMER_TIMEOUT_SINCE = (3, 12)


def apply_policies(
    api: ManagementApi, vhost: str, delivery_limit: int, consumer_timeout: int | None = None
) -> list[str]:
    """Create the vhost (default queue type quorum) when missing, and set every queue's
    policy, with `consumer_timeout` (seconds) in it where the server allows it; the names
    of the policies set. Idempotent: run it at every deploy."""
    if api.vhost(vhost) is None:
        api.create_vhost(vhost, default_queue_type="quorum")
    if consumer_timeout is not None and api.version() < POLICY_CONSUMER_TIMEOUT_SINCE:
        consumer_timeout = None
    policies = queue_policies(delivery_limit, consumer_timeout=consumer_timeout)
    for name, body in policies.items():
        api.set_policy(vhost, name, body)
    return list(policies)


def dead_letter_queues() -> list[Queue]:
    """The queues that keep parked messages: never consumed by workers, only by
    `apiworker dead-letters`."""
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
    return [
        Queue(
            dead_letter_queue(name),
            exchange,
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in ALL_QUEUES
    ]


#: Celery's publish retry, sized for a quorum queue's leader election: while a queue has
#: no leader RabbitMQ nacks its publishes (py-amqp's MessageNacked, which kombu retries as
#: a connection error), and an election after a node's death takes about 1 s here but up
#: to 10 s on a loaded cluster. Waits of 0, 0.5, then 1 s: about 13.5 s over 15 retries,
#: where Celery's default (3 retries, 0.2 s apart) gives up after 0.6 s.
#: CFG#task-publish-retry-policy
PUBLISH_RETRY_POLICY = {
    "max_retries": 15,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1.0,
}
#: Seconds a publish waits for RabbitMQ's confirm before it is retried (above, on a new
#: connection): a node under a memory or disk alarm blocks publishers and never
#: confirms, which without a timeout holds the publishing thread for the alarm's length.
#: 15 attempts x (5 s + 1 s) stays under TASK_SOFT_TIME_LIMIT's 120 s.
CONFIRM_TIMEOUT = 5.0


class ConfirmTimeoutAMQP(AMQP):  # type: ignore[misc]  # Celery is untyped
    """Celery's AMQP support, with `CONFIRM_TIMEOUT` as every publish's default confirm
    timeout: Celery has a per-call `confirm_timeout` and no setting for it. Installed as
    the worker app's `amqp_cls` (worker/app.py; `AMQP_CLASS` here)."""

    def _create_task_sender(self) -> Any:
        send = super()._create_task_sender()

        def send_task_message(*args: Any, confirm_timeout: float | None = None,
                              **kwargs: Any) -> Any:  # fmt: skip
            return send(*args, confirm_timeout=confirm_timeout or CONFIRM_TIMEOUT, **kwargs)

        return send_task_message


#: The worker app's `amqp_cls` on this broker.
AMQP_CLASS = f"{__name__}:ConfirmTimeoutAMQP"


def celery_conf(settings: BrokerSettings) -> dict[str, Any]:
    """The Celery settings of a RabbitMQ broker."""
    return {
        # A lost node: the next URL is picked at random, not always the next one (the
        # list itself comes shuffled: redisconn/celery_config.py). CFG#broker-failover-strategy
        "broker_failover_strategy": "shuffle",
        # Publisher confirms: a publish returns only once RabbitMQ has taken the message
        # (on a quorum queue: once a majority of its replicas has it), so a job is never
        # dropped silently between producer and queue. CFG#broker-transport-options,
        # https://www.rabbitmq.com/docs/confirms
        "broker_transport_options": {"confirm_publish": True},
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # A dead peer is noticed within two heartbeats, not at the next TCP timeout.
        # CFG#broker-heartbeat
        "broker_heartbeat": 30,
        # RabbitMQ closes a channel when it refuses something on it (a consumer timeout:
        # PRECONDITION_FAILED; a missing queue: NOT_FOUND). Off (Celery's default), the
        # consumer treats that as unrecoverable and the worker exits; on, it reconnects
        # like after a lost connection. CFG#broker-channel-error-retry
        "broker_channel_error_retry": True,
        # A job redelivered after it already succeeded (its acknowledgement lost with a
        # connection or channel) is not run again: the worker finds its SUCCESS in the
        # result backend first. Only redelivered messages are looked up.
        # CFG#worker-deduplicate-successful-tasks
        "worker_deduplicate_successful_tasks": True,
        "task_queues": [amqp_queue(name) for name in ALL_QUEUES],
        # Quorum queues have no global QoS; Celery detects them and uses per-consumer
        # prefetch, and routes countdowns through RabbitMQ's delayed-delivery exchanges
        # instead of holding them in the worker. CFG#worker-detect-quorum-queues,
        # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html#using-quorum-queues
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def prepare_consumer(connection: Any) -> None:
    """Declare the dead-letter exchange and one `.dead` quorum queue per queue each time
    the consumer connects, before it consumes, so a rejected message always has
    somewhere to go."""
    channel = connection.channel()
    try:
        for queue in dead_letter_queues():
            queue(channel).declare()
    finally:
        channel.close()


# Headers RabbitMQ adds on the way to the dead-letter queue; a replayed job starts afresh.
_BROKER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                   "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                   "x-last-death-reason", "x-delivery-count")  # fmt: skip


class AmqpBroker:
    kind = "amqp"

    def __init__(self, url: str, *, management_url: str | None = None) -> None:
        self.display_url = masked_url(url)
        self._url = url
        self._management_url = management_url
        self.vhost = _vhost_of(url)

    @contextmanager
    def _connection(self, timeout: float = 5.0) -> Iterator[Any]:
        # Publisher confirms: a replayed message leaves the dead-letter queue only once
        # RabbitMQ has confirmed its copy in the queue it returns to.
        connection = Connection(
            self._url, connect_timeout=timeout, transport_options={"confirm_publish": True}
        )
        try:
            connection.ensure_connection(max_retries=1, timeout=timeout)
            yield connection
        except (KombuError, OSError, AMQPError) as exc:
            raise BrokerError(f"{self.display_url}: {exc}") from exc
        finally:
            connection.release()

    def ping(self, timeout: float) -> str:
        with self._connection(timeout) as connection:
            server = connection.connection.server_properties or {}
        product = server.get("product", "AMQP server")
        version = server.get("version", "")
        return f"{self.display_url} ({product} {version})".replace(" )", ")")

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        unacked = self._unacked_from_management(queues)
        with self._connection() as connection:
            return [
                QueueDepth(
                    name,
                    _ready(connection, name),
                    unacked.get(name),
                    _ready(connection, dead_letter_queue(name)),
                )
                for name in queues
            ]

    def _unacked_from_management(self, queues: Sequence[str]) -> dict[str, int]:
        if not self._management_url:
            return {}
        api = ManagementApi(self._management_url)
        found: dict[str, int] = {}
        for name in queues:
            figures = api.queue(self.vhost, name)
            # Never declared: nothing delivered from it.
            found[name] = int((figures or {}).get("messages_unacknowledged", 0))
        return found

    def cluster(self, queues: Sequence[str]) -> ClusterView:
        if not self._management_url:
            raise NotSupported(
                "RabbitMQ tells its nodes and replicas through its management API: "
                "set RABBITMQ_MANAGEMENT_URL"
            )
        return ManagementApi(self._management_url).cluster(self.vhost, queues)

    def parked(self, queues: Sequence[str], limit: int) -> list[ParkedMessage]:
        """Parked messages, each taken and put back as an exact copy at its queue's tail
        (confirmed, then the original acknowledged), so listing them costs no delivery.

        A quorum queue has no way to browse, and returning a message unacknowledged
        (a nack with requeue, a closed channel) counts as a delivery on RabbitMQ 3.x, so
        each listing would have added one to every message it showed. Only as many
        messages as each queue held when asked are taken, so no copy is read twice; a
        listing of fewer than a queue holds moves those it shows behind the others."""
        return self._take_parked(queues, limit, _publish_copy, held_only=True)

    def replay_parked(self, queues: Sequence[str], limit: int | None) -> list[ParkedMessage]:
        return self._take_parked(queues, limit, _republish, held_only=False)

    def _take_parked(
        self,
        queues: Sequence[str],
        limit: int | None,
        send: Callable[[Any, str, str, Any], None],
        *,
        held_only: bool,
    ) -> list[ParkedMessage]:
        """Take up to `limit` parked messages of `queues`, each sent on by `send(producer,
        queue, dead-letter queue, message)` (confirmed) before it is acknowledged, so
        none is lost either way; `held_only`: no more of a queue than it held when
        asked (those sent back to it are not read again)."""
        taken: list[ParkedMessage] = []
        with self._connection() as connection:
            channel = connection.channel()
            producer = Producer(channel)
            try:
                for name in queues:
                    dead = dead_letter_queue(name)
                    held = _ready(connection, dead)
                    left = held if held_only or not held else math.inf
                    while left and (limit is None or len(taken) < limit):
                        message = _get(channel, dead)
                        if message is None:
                            break
                        send(producer, name, dead, message)
                        message.ack()
                        taken.append(_parked(name, message))
                        left -= 1
            finally:
                channel.close()
        return taken

    def close(self) -> None:
        """Each command opens and releases its own connection."""


def _vhost_of(url: str) -> str:
    """The vhost of `url`, or of the first URL of a failover list (they share it),
    percent-decoded as kombu decodes it (`/%2F` and `/` both name the vhost `/`)."""
    path = urlsplit(url.split(";", 1)[0]).path
    return "/" if path in ("", "/") else unquote(path[1:])


def _ready(connection: Any, queue: str) -> int:
    """Messages waiting in `queue`; 0 when it was never declared."""
    channel = connection.channel()
    try:
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
        return int(count)
    except connection.channel_errors:  # 404: no such queue yet
        return 0
    finally:
        try:
            channel.close()
        except connection.connection_errors + connection.channel_errors:
            pass


def _get(channel: Any, queue: str) -> Any:
    """The next message of `queue` as a kombu message (headers, decode, ack), or None."""
    try:
        return Queue(queue, channel=channel, no_declare=True).get(no_ack=False, accept=["json"])
    except Exception as exc:
        raise BrokerError(f"cannot read {queue}: {exc}") from exc


def _parked(queue: str, message: Any) -> ParkedMessage:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    # An undecodable body is why some messages are parked: then only headers are shown.
    with contextlib.suppress(Exception):
        payload = message.decode()
        if isinstance(payload, list | tuple) and len(payload) >= 2:
            args, kwargs = list(payload[0]), dict(payload[1])
    return ParkedMessage(
        queue=queue,
        task=str(headers.get("task", "?")),
        task_id=str(headers.get("id", "")),
        args=args,
        kwargs=kwargs,
        deliveries=int(headers.get("x-delivery-count") or death.get("count") or 0),
        reason=str(death.get("reason", "?")),
    )


def _republish(producer: Any, queue: str, dead: str, message: Any) -> None:
    """Send a parked message back to `queue` as a new job (the broker's headers dropped)."""
    headers = {key: value for key, value in (message.headers or {}).items()
               if key not in _BROKER_HEADERS}  # fmt: skip
    _publish(producer, queue, message, headers)


def _publish_copy(producer: Any, queue: str, dead: str, message: Any) -> None:
    """Put an exact copy of `message` (headers included) at the tail of its dead-letter
    queue `dead`, where it was."""
    _publish(producer, dead, message, dict(message.headers or {}))


def move_message(producer: Any, queue: str, message: Any) -> None:
    """Send a delivered message on to `queue` as it is (the broker's headers dropped),
    confirmed, without kombu's retry: the caller acknowledges the original only once
    this returns, and keeps it when this raises, so nothing is lost either way
    (worker/amqp_admission.py moves jobs with it, from the consumer's event loop, where
    a retry's back-off would hold every queue's deliveries)."""
    headers = {key: value for key, value in (message.headers or {}).items()
               if key not in _BROKER_HEADERS}  # fmt: skip
    _publish(producer, queue, message, headers, retry=False)


def _publish(
    producer: Any, queue: str, message: Any, headers: dict[str, Any], *, retry: bool = True
) -> None:
    properties = message.properties or {}
    producer.publish(
        message.body,
        # The default exchange: straight to the queue of that name, whichever exchanges
        # producers bound it to.
        exchange="",
        routing_key=queue,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        delivery_mode=2,
        # Unroutable (the queue deleted meanwhile): RabbitMQ returns it before its
        # confirm, py-amqp raises, and the original is not acknowledged. Without it, an
        # unroutable message is confirmed, then the original acknowledged: lost.
        mandatory=True,
        confirm_timeout=CONFIRM_TIMEOUT,
        retry=retry,
        retry_policy={"max_retries": 3},
    )
