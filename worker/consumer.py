"""The worker's message consumer: messages no task can run leave a failure record.

Celery logs a message it cannot decode, one for a task name it does not know, or one
without task headers, and then drops it (an ack or a reject). A log line scrolls away;
the service's promise is that every job either succeeds or leaves a record that says
why. So each such message is written to the failure stream like any failed job, and
rejected without requeueing: on RabbitMQ that dead-letters it to its queue's `.dead`
queue, where `apiworker dead-letters` lists and replays it; on Redis it is removed (its
record keeps what was readable of it). The worker then goes on with the next message.

When the RabbitMQ connection is lost, jobs the threads pool holds but has not started
are cancelled, not run beside their redelivery (worker/pending_jobs.py).

Each time it connects, the consumer lets its broker prepare (on RabbitMQ: declare the
dead-letter exchange and queues, so a rejected message always has somewhere to go).

On Redis a message whose deliveries kept ending without an acknowledgement is parked by
the transport (brokers/redis_transport.py), which tells `record_parked`: it leaves a
failure record, as RabbitMQ's dead-lettering does here. The consumer also tells the
transport how many execution slots are free (`free_slots`), so its fetch refills an idle
thread at once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.exceptions import NotRegistered
from celery.utils.objects import Bunch
from celery.worker import state
from celery.worker.consumer import Consumer

from brokers import amqp_delivery, broker_kind, broker_module, dead_letter_queue, redis_transport
from brokers.redis import parked_message
from results.failure_record import failure_record
from results.runtime import get_runtime
from settings import get_settings
from telemetry.metrics import FAILURES_RECORDED
from telemetry.redact import redact
from worker import amqp_admission, pending_jobs

log = logging.getLogger("worker.consumer")

#: The `task` field of a record whose message named no task it could be run as.
UNREADABLE = "(unreadable message)"
_EXCERPT_BYTES = 200


class UnreadableMessage(Exception):
    """A broker message that cannot be run as a job: why, in its message."""


class DeliveryLimitReached(Exception):
    """A job parked because its deliveries kept ending without an acknowledgement."""


def record_parked(queue: str, item: bytes, deliveries: int) -> None:
    """The Redis transport parked a message (brokers/redis_transport.py): record why."""
    parked = parked_message(queue, item, deliveries)
    _record(
        parked.task,
        parked.task_id,
        DeliveryLimitReached(
            f"parked in {dead_letter_queue(queue)} after {deliveries} deliveries that each "
            "ended without an acknowledgement (a dead or stuck worker, a reject with "
            "requeue); `apiworker dead-letters replay` sends it again"
        ),
        parked.args,
        parked.kwargs,
    )


class RecordingConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, recording what it would otherwise only log."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        # RabbitMQ's delayed delivery set up once per connection, not once per URL of a
        # failover list (brokers/amqp_delivery.py says why).
        # On RabbitMQ, the upstreams' budgets admit jobs before a worker slot
        # (worker/amqp_admission.py).
        default_steps = [
            *amqp_delivery.consumer_steps(Consumer.Blueprint.default_steps),
            amqp_admission.STEP,
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # On RabbitMQ only, where the server itself delivers every unacknowledged
        # message again once the connection is gone. (The Redis transport keeps a live
        # worker's messages in its own hands: brokers/redis_transport.py.)
        # On Redis the same tracker drops the unstarted jobs of a worker that learns it
        # was declared dead (worker/shutdown.py).
        self._cancel_on_connection_loss = broker_kind(get_settings().worker.broker_url) == "amqp"
        self.pending_jobs = pending_jobs.track(self.pool)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler, after RabbitMQ's admission: a default-queue job whose
        upstream has no room here is moved to its upstream's queue instead
        (worker/amqp_admission.py)."""
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            gate = getattr(self, "admission_gate", None)
            if gate is not None and gate.moved(message):
                return None
            return handle(message)

        return on_task_received

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Jobs the threads pool holds but has not started are cancelled before the
        broker delivers them again (worker/pending_jobs.py says why)."""
        if self.pending_jobs is not None and self._cancel_on_connection_loss:
            cancelled = self.pending_jobs.cancel_unstarted()
            if cancelled:
                log.warning(
                    "broker connection lost: %d job(s) not started yet cancelled; the broker "
                    "delivers them again",
                    cancelled,
                )
        super().on_connection_error_after_connected(exc)

    def connect(self) -> Any:
        redis_transport.free_slots = self._free_slots
        connection = super().connect()
        broker_module(get_settings().worker.broker_url).prepare_consumer(connection)
        return connection

    def _free_slots(self) -> int:
        """Threads (or child processes) not running or about to run a job: the pool's
        size less the requests handed to it (a held countdown is not among them until
        it is due)."""
        size = getattr(self.pool, "num_processes", None) or self.pool.limit or 0
        return max(0, int(size) - len(state.reserved_requests))

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.error(
            "unreadable message rejected (content type %r): %s: %s",
            message.content_type,
            type(exc).__name__,
            redact(str(exc)),
        )
        excerpt = _excerpt(message.body)
        _record(
            UNREADABLE,
            _header(message, "id"),
            UnreadableMessage(
                f"cannot decode ({type(exc).__name__}: {exc}); content type "
                f"{message.content_type!r}; body starts {excerpt!r}"
            ),
        )
        message.reject(requeue=False)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """What Celery's own does (reject, mark the job failed, the event, the signal),
        logged as one line that points to the failure record instead of Celery's dump
        of the message ending "The message has been ignored and discarded"."""
        name = _header(message, "task") or "?"
        task_id = _header(message, "id")
        message.reject_log_error(log, self.connection_errors)
        request = Bunch(
            name=name,
            chord=None,
            root_id=_header(message, "root_id") or None,
            correlation_id=message.properties.get("correlation_id"),
            reply_to=message.properties.get("reply_to"),
            errbacks=None,
        )
        self.app.backend.mark_as_failure(task_id, NotRegistered(name), request=request)
        if self.event_dispatcher:
            self.event_dispatcher.send(
                "task-failed", uuid=task_id, exception=f"NotRegistered({name!r})"
            )
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=name, id=task_id)
        args, kwargs = _arguments(message)
        entry = _record(
            name, task_id, UnreadableMessage(f"no task named {name!r} is registered"), args, kwargs
        )
        log.error(
            "job FAILURE task=%s id=%s error=NotRegistered: no such task; rejected, failure "
            "record %s (apiworker failures list)",
            redact(name),
            task_id or "-",
            entry or "not written",
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_invalid_task(body, message, exc)
        _record(
            _header(message, "task") or UNREADABLE,
            _header(message, "id"),
            UnreadableMessage(f"invalid task message: {exc}"),
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        super().on_unknown_message(body, message)
        _record(
            UNREADABLE,
            "",
            UnreadableMessage(f"message without task headers; body starts {_excerpt(body)!r}"),
        )


# Loaded by Celery as the worker's consumer class (`worker_consumer`), before it consumes.
redis_transport.on_parked.append(record_parked)


def _header(message: Any, name: str) -> str:
    value = (getattr(message, "headers", None) or {}).get(name)
    return value if isinstance(value, str) else ""


def _arguments(message: Any) -> tuple[list[Any], dict[str, Any]]:
    """The job's arguments, when its body decodes as Celery's protocol 2 payload."""
    try:
        payload = message.decode()
    except Exception:  # the record says what it can; the body itself was unreadable
        return [], {}
    if isinstance(payload, list | tuple) and len(payload) >= 2:
        args, kwargs = payload[0], payload[1]
        if isinstance(args, list | tuple) and isinstance(kwargs, dict):
            return list(args), kwargs
    return [], {}


def _excerpt(body: Any) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        text = bytes(body[:_EXCERPT_BYTES]).decode("utf-8", "replace")
    else:
        text = str(body)[:_EXCERPT_BYTES]
    return redact(text)


def _record(
    task: str,
    task_id: str,
    exc: Exception,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> str | None:
    """Write the failure record; its stream entry id, or None when Redis is away."""
    record = failure_record(task, task_id, args or [], kwargs or {}, exc, attempts=1)
    try:
        entry = get_runtime().store.record_failure(record)
    except Exception:  # the results Redis away: the log line above stays
        log.exception("could not record an unreadable message (task=%s)", task)
        return None
    FAILURES_RECORDED.labels(task, type(exc).__name__).inc()
    return entry
