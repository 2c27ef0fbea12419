"""Admission on RabbitMQ: an upstream's jobs wait in its queue, not in a worker thread.

RabbitMQ pushes messages to a consumer up to its prefetch window, so admission here is
the window itself, as RabbitMQ's own guide sizes work in progress
(https://www.rabbitmq.com/docs/consumer-prefetch), plus cancelling and resuming a
queue's consumer, what Celery's `cancel_consumer`/`add_consumer` do:

- **An upstream's own queue** is consumed with a prefetch window of the jobs this
  process may hold for it (`Budget.room`: its share of half of what the fleet's rate
  serves within RATE_LIMIT_MAX_WAIT; at most three quarters of the pool's threads, so
  the rest serve other upstreams). RabbitMQ then delivers its next job only when one
  is acknowledged, so no job is taken that could not get its token within the wait
  bound. Per-consumer prefetch is what quorum queues have (no global QoS), and RabbitMQ
  fixes a consumer's window at `basic.consume`, so the window is set on the channel just
  before consuming that queue and Celery's own set back right after. A change of the
  rate resizes the window (cancel, consume again: at most once a second, at once when
  the rate fell); messages already delivered stay in hand.
- **While the upstream blocks** (it paused the fleet, or a call found no token within
  the wait bound: `Budget.blocked`) its queue's consumer is cancelled, and consumed
  again once that is over and this process holds at most half its room.
- **The default queue mixes upstreams** (a stock producer's `send_task` by name lands
  there). Its consumer cannot skip a message, so a job there whose upstream binds
  (`Budget.held`: paused, or on-demand calls queued for tokens) or has no room in this
  process is moved once to the tail of its upstream's queue (a confirmed
  publish, then the original acknowledged) and waits there like the rest; other
  upstreams' jobs behind it are taken at once. An on-demand job reserves its token
  ahead of every bulk call, so it is moved only when the upstream blocks or the
  on-demand jobs in hand fill the room: moved for less, it would wait behind a
  refresh's batches at the tail of that queue. It is neither run nor retried, and a
  job is moved at most once: in its upstream's queue the window admits it. (The Redis
  broker moves such jobs inside its fetch script: brokers/redis_transport.py.) A job
  whose move fails is taken as without a budget, so nothing is lost.
- **A move is two steps on two connections**, the copy's confirmed publish and the
  original's acknowledgement, and AMQP cannot make them one (a transaction would take
  every acknowledgement of the consumer's channel with it). A connection lost between
  them delivers the original again, and moved again it would run twice. So once the
  copy is confirmed, the job's id is marked in the fleet's Redis (`admission:moved:<id>`, for a
  day), and a redelivered original found marked is acknowledged and dropped: its copy
  runs. Only redelivered messages are looked up, so the usual path pays nothing; the
  mark is written after the confirm, so a failure between them can still run a job
  twice, never lose one.

Queues an operator stopped (`celery control cancel_consumer`) are left alone: only the
queues the worker is told to consume are managed. It runs on the event loop's timer,
every TICK_SECONDS, in the consumer's own thread (its channel is not thread-safe).

Hand-written: Celery and kombu offer cancel and consume per queue and a prefetch per
channel, but nothing that sizes a queue's window from a rate or stops it on a signal.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from apis.breaker import shared_redis
from apis.budget import ON_DEMAND, Budget
from brokers import DEFAULT_QUEUE, amqp, broker_kind
from settings import get_settings
from tasks.base import class_of
from worker import admission

log = logging.getLogger("worker.admission")

#: How often the windows are checked against the budgets (seconds).
TICK_SECONDS = 0.1
#: A window that could grow is resized at most this often (seconds).
RESIZE_SECONDS = 1.0
#: A window is resized up once the room is this much larger than it.
GROWTH = 1.5
#: How long a move waits for a producer of the app's pool (seconds).
CONFIRM_WAIT = 1.0
#: How long a moved job's mark is kept (seconds): far longer than its original can take
#: to be delivered again (a lost connection, a consumer timeout, a node's restart).
MOVED_MARK_SECONDS = 86_400


def _count(taken: Counter[str], prefix: str) -> int:
    return sum(count for name, count in taken.items() if name.startswith(prefix))


class Gate:
    """One consumer connection's admission: the windows of its upstreams' queues, and
    the moves out of the default queue."""

    def __init__(self, consumer: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.c = consumer
        self._clock = clock
        #: The window each managed queue is consumed with (None: Celery's own prefetch).
        self.windows: dict[str, int | None] = {}
        self._resized: dict[str, float] = {}
        self._failed: set[str] = set()

    # -- the upstreams' own queues ---------------------------------------------------------

    def tick(self) -> None:
        """Cancel, resume or resize each upstream queue's consumer by its budget. A fault
        is logged (once per kind) and leaves the consumers as they are."""
        try:
            self._tick()
        except Exception as exc:
            self._log_once("windows", exc)

    def _managed(self) -> list[tuple[str, str, Budget]]:
        selected = self.c.app.amqp.queues.consume_from
        return [
            (prefix, queue, budget)
            for prefix, queue, budget in admission.budgets()
            if budget.enabled and queue in selected
        ]

    def _tick(self) -> None:
        consumer = self.c.task_consumer
        if consumer is None:
            return
        taken = admission.in_hand()
        now = self._clock()
        for prefix, queue, budget in self._managed():
            consuming = consumer.consuming_from(queue)
            if budget.blocked():
                if consuming:
                    self._cancel(queue)
                continue
            room = self._room(budget)
            if room is None:  # unbounded: Celery's own prefetch
                if not consuming:
                    self._consume(queue, None)
                elif self.windows.get(queue) is not None:
                    self._cancel(queue)
                    self._consume(queue, None)
                continue
            if consuming:
                window = self.windows.get(queue)
                shrink = window is None or window > room
                grow = window is not None and room >= GROWTH * window + 1
                if not (shrink or (grow and now - self._resized.get(queue, 0.0) >= RESIZE_SECONDS)):
                    continue
                self._cancel(queue)
                self._resized[queue] = now
            if _count(taken, prefix) * 2 <= room:
                self._consume(queue, room)

    def _room(self, budget: Budget) -> int | None:
        """The upstream's room in this process (`Budget.room`), at most three quarters
        of the pool's threads: the rest stay free for other upstreams' jobs while this
        one's wait for their tokens."""
        room = budget.room()
        if room is None:
            return None
        threads: int = self.c.pool.num_processes
        return max(1, min(room, threads * 3 // 4))

    def hold_back(self) -> None:
        """Before the consumer first consumes: leave out the queues of upstreams with a
        known rate or blocked, so the first tick consumes them with their window rather
        than Celery's prefetch (`consume()` starts every queue not yet consumed)."""
        try:
            for _, queue, budget in self._managed():
                if budget.blocked() or budget.room() is not None:
                    self.c.task_consumer.cancel_by_queue(queue)
        except Exception as exc:
            self._log_once("windows", exc)

    def _cancel(self, queue: str) -> None:
        self.c.task_consumer.cancel_by_queue(queue)
        log.debug("queue %s: consumer cancelled by its upstream's budget", queue)

    def _consume(self, queue: str, window: int | None) -> None:
        """Consume `queue` with a prefetch window of `window` (None: Celery's own)."""
        consumer = self.c.task_consumer
        channel = consumer.channel
        default = self.c.qos.value if self.c.qos is not None else 0
        if window is not None:
            channel.basic_qos(0, window, False)
        try:
            consumer.add_queue(self.c.app.amqp.queues[queue])
            consumer.consume()
        finally:
            if window is not None:
                channel.basic_qos(0, default, False)
        self.windows[queue] = window
        log.debug("queue %s: consumed with a window of %s", queue, window or default)

    # -- the default queue ----------------------------------------------------------------

    def moved(self, message: Any) -> bool:
        """Whether `message` was moved to its upstream's queue instead of being taken
        (it came from the default queue and its upstream binds or has no room here)."""
        consumer = self.c.task_consumer
        try:
            tag = (message.delivery_info or {}).get("consumer_tag")
            if consumer is None or tag is None or tag != consumer._active_tags.get(DEFAULT_QUEUE):
                return False
            name = (message.headers or {}).get("task")
            if not isinstance(name, str):
                return False
            if self._moved_before(message):
                message.ack()
                log.info("job already moved task=%s id=%s: its original, delivered again, "
                         "is dropped; the copy runs", name, _job_id(message))  # fmt: skip
                return True
            queue = self._no_room(name, message)
            if queue is None:
                return False
            # Through a connection of the app's producer pool, not the consumer's own:
            # the consumer's is reading this very delivery, and a confirm awaited on it
            # from inside its handler can be missed.
            with self.c.app.producer_pool.acquire(block=True, timeout=CONFIRM_WAIT) as producer:
                amqp.move_message(producer, queue, message)
        except Exception as exc:  # taken as without a budget: nothing is lost
            if self._connection_lost(exc):
                # Each time, one line, no traceback: it passes with the reconnect. The
                # copy may have reached the queue before the confirm was lost: then the
                # job runs twice (at least once, never lost), and the line names it.
                log.warning(
                    "RabbitMQ admission could not move job %s (%s: %s); it is taken here "
                    "instead, and runs twice if its copy arrived before the connection broke",
                    _job_id(message),
                    type(exc).__name__,
                    exc,
                )
            else:
                self._log_once("moves", exc)
            return False
        self._mark_moved(message)
        message.ack()
        log.info(
            "job moved task=%s id=%s to queue %s: its upstream's budget binds; it waits there",
            name,
            _job_id(message),
            queue,
        )
        return True

    def _moved_before(self, message: Any) -> bool:
        """Whether `message` is an original delivered again after its copy was moved.
        A fault reading the mark counts as not moved: the job is handled as any other."""
        if not (message.delivery_info or {}).get("redelivered"):
            return False
        try:
            client, key = _moved_mark(_job_id(message))
            return bool(client.exists(key))
        except Exception as exc:
            self._log_once("marks", exc)
            return False

    def _mark_moved(self, message: Any) -> None:
        """Mark `message`'s job as moved (its copy is confirmed). A fault is logged: the
        move stands, and only a lost connection before the acknowledgement could run the
        job twice."""
        try:
            client, key = _moved_mark(_job_id(message))
            client.set(key, "1", ex=MOVED_MARK_SECONDS)
        except Exception as exc:
            self._log_once("marks", exc)

    def _no_room(self, name: str, message: Any) -> str | None:
        """The queue of the upstream of task `name` when its job `message`, taken now,
        could not get its token within the wait bound, else None.

        An on-demand call reserves its token ahead of every bulk call (apis/budget.py),
        so an on-demand job waits only behind the on-demand jobs in hand: it is moved
        only when the upstream blocks or those fill its room (or every thread holds a
        job of that upstream). Moved for less, it would land at the tail of its
        upstream's queue, behind a refresh's batches: RabbitMQ cannot put it at the head.
        """
        for prefix, queue, budget in self._managed():
            if not name.startswith(prefix):
                continue
            room = self._room(budget)
            if class_of(self.c.app.tasks.get(name), message) == ON_DEMAND:
                if budget.blocked():
                    return queue
                if room is None:
                    return None
                threads: int = self.c.pool.num_processes
                on_demand = _count(admission.in_hand(ON_DEMAND), prefix)
                if on_demand >= room or _count(admission.in_hand(), prefix) >= threads:
                    return queue
                return None
            if budget.held():
                return queue
            if room is not None and _count(admission.in_hand(), prefix) >= room:
                return queue
            return None
        return None

    def _connection_lost(self, exc: Exception) -> bool:
        """A lost broker connection (a node down, a failover): the consumer reconnects
        and says so itself, so it is no failure of admission's."""
        errors = tuple(getattr(self.c, "connection_errors", ()) or ())
        return isinstance(exc, (ConnectionError, *errors))

    def _log_once(self, kind: str, exc: Exception) -> None:
        if kind not in self._failed:
            self._failed.add(kind)
            log.error(
                "RabbitMQ admission by the upstream budgets failed (%s: %s): %s",
                kind,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )


def _job_id(message: Any) -> str:
    return str((message.headers or {}).get("id", "-"))


def _moved_mark(job_id: str) -> tuple[Any, str]:
    """The fleet's Redis for the upstreams' shared state (the budgets' own), and the key
    that marks job `job_id` as moved."""
    api = get_settings().api
    target = api.resolve_cluster() or api.resolve_redis()
    if target is None:
        raise LookupError("no Redis is configured for the fleet's shared state")
    return shared_redis(target), f"{api.result_key_prefix}admission:moved:{job_id}"


class AmqpAdmission(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """The consumer step that runs a `Gate` on RabbitMQ (nothing on Redis, whose fetch
    admits by itself)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        c.admission_gate = None
        self._timer_entry: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        if broker_kind(get_settings().worker.broker_url) != "amqp" or c.timer is None:
            return
        gate = c.admission_gate = Gate(c)
        gate.hold_back()
        self._timer_entry = c.timer.call_repeatedly(TICK_SECONDS, gate.tick)

    def stop(self, c: Any) -> None:
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None
        c.admission_gate = None

    shutdown = stop


#: The step's dotted name, for the consumer's blueprint (worker/consumer.py).
STEP = f"{__name__}:AmqpAdmission"
