"""kombu's Redis transport with a reliable fetch: the worker's side of the Redis broker.

Producers are untouched: a stock Celery or kombu producer, celery-node and `apiworker
enqueue` all LPUSH to the same lists as before. Only how a worker takes, holds and hands
back messages changes (the Lua scripts and the keys are in `brokers.redis_scripts`):

- **Taking is recording.** One script takes as many messages as the process has free
  prefetch slots and records each in the taking channel's in-hand hash, in one step on
  the server. kombu's BRPOP takes first and records in a second round trip: a worker
  killed in between lost the message. A fetch that finds nothing writes nothing.
- **Liveness is a heartbeat.** A channel that fetches heartbeats every
  `heartbeat_interval` seconds on a thread and a connection of its own
  (brokers/redis_threads.py), from its first fetch until it has handed back and left:
  through a warm shutdown's last running jobs, and whatever the pool (a `solo` job
  runs on the event loop's thread, which a loop timer could not beat beside). When a
  holder's heartbeat is older than `heartbeat_timeout`, the next live holder's heartbeat
  puts its messages back at the head of their queues, but only if that holder's own
  previous heartbeat is recent (under half the timeout): a paused Redis or a paused
  rescuer rescues nobody. A holder that was declared dead all the same (paused itself
  past the timeout) learns it at its next heartbeat, says so in an error, and stops
  delivering the batch in hand. The visibility timeout stays, as the backstop for a
  holder that is alive but stuck.
- **A delivery limit.** A delivery that ends without an acknowledgement counts: a dead
  holder, a reject with requeue, the visibility timeout (what RabbitMQ's quorum queues
  count). A message counted more than `delivery_limit` times is parked in
  `{queue}.dead` (its base queue's, for a priority list) instead, and `on_parked`
  callbacks (the worker's failure record) are told.
- **Acknowledgements in batches.** An ack leaves memory at once (the prefetch slot is
  free) and reaches Redis with the others that arrived meanwhile, in one script call per
  thousand on a flusher thread that keeps a refused batch and retries it: no timer, so
  the first ack waits for nothing.
- **Hand-back.** A channel that closes (warm shutdown, lost connection) hands back
  everything its holder has in hand, delivered or not, and forgets its holder; if Redis
  cannot be reached then, the next channel of the same process hands them back as soon
  as Redis answers, without waiting for the heartbeat to lapse.

An idle worker waits on its first queue with `BLMOVE q q RIGHT RIGHT` (it moves the
item onto itself: nothing is taken) for at most `idle_wait` seconds, then fetches again;
so a message on the first queue is picked up at once, and one on another queue within
`idle_wait`. A Lua script cannot block, and no blocking command takes from several lists
and records in one step, which is why the wait and the take are two commands.

The subclasses ride on kombu's internals (its poller's BRPOP slot, `QoS`), so kombu is
pinned below its next minor version in pyproject.toml, and the suite runs this transport
against a real Redis.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from queue import Empty
from typing import Any

import redis
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from brokers import redis_scripts as scripts
from brokers.redis_threads import AckBuffer, Heartbeat

log = logging.getLogger(__name__)

REFUSED_CONTENT_TYPE = "application/x-malformed-queue-item"
_KEPT_BYTES = 4096

#: Called with (queue, item, deliveries) for each message parked at the delivery limit.
ParkedCallback = Callable[[str, bytes, int], None]
on_parked: list[ParkedCallback] = []

#: Called with the channel, on its heartbeat thread, when its holder learns it was
#: declared dead: the worker drops the jobs it has not started (worker/shutdown.py).
DeclaredDeadCallback = Callable[["ReliableChannel"], object]
on_declared_dead: list[DeclaredDeadCallback] = []

#: Execution slots of this process free now (threads or child processes not running a
#: job, held countdowns not counted), when the worker tells (worker/consumer.py); None
#: outside a worker. The fetch refills as soon as one is free (`_batch_floor`).
free_slots: Callable[[], int] | None = None

#: The upstream budgets' admission, installed by the worker. It returns the (task-name
#: prefix, queue) of each upstream with no budget now, and how many messages a fetch may
#: take at most (None: as many as there are free slots). A fetch leaves those queues
#: out, and moves their jobs met in another queue (a stock producer's default queue)
#: into them, so they wait in the broker, not in a worker thread. None: no admission.
Admission = Callable[[], tuple[Sequence[tuple[str, str]], int | None]]
admission: Admission | None = None

# Holders of this process whose hand-back failed (Redis away as their channel closed):
# the next channel that reaches Redis hands their messages back.
_orphans: set[str] = set()
_orphans_lock = threading.Lock()


def envelope_or_refused(raw: str | bytes) -> dict[str, Any]:
    """The envelope of a well-formed queue item, or one the worker refuses and logs.

    kombu decodes each item inside its consumer loop: an item that is not JSON, a JSON
    value that is not an envelope, or an envelope whose body is not base64 raised there
    and stopped the worker ("Unrecoverable error"). Anyone able to write to the broker
    could stop the service. Such an item becomes a message of a content type the worker
    does not accept (`accept_content` is JSON only): Celery logs it, the consumer records
    it (worker/consumer.py) and drops it, and the next job is served.
    """
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("properties"), dict):
        if value["properties"].get("body_encoding") != "base64":
            return value
        try:
            base64.b64decode(value.get("body", ""), validate=True)
            return value
        except (TypeError, ValueError, binascii.Error):
            pass
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
    return {
        "body": base64.b64encode(data[:_KEPT_BYTES]).decode(),
        "content-type": REFUSED_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": {},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": ""},
            "priority": 0,
        },
    }


_SCRIPT_NAMES = ("FETCH", "ACK", "REQUEUE", "HEARTBEAT", "VISIBILITY", "RELEASE")


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324  # how Redis names a script


def new_holder_id() -> str:
    """Readable in `apiworker queues` and Redis: host, process, and a unique tail."""
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


class ReliableQoS(kombu_redis.QoS):
    """kombu's Redis QoS, with the in-hand hash of `ReliableChannel` as its record."""

    def append(self, message: Any, delivery_tag: str) -> None:
        # The fetch script recorded it already: only the prefetch accounting is left.
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self.channel.acks.add(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:  # a delivery that ended unacknowledged: counted, as RabbitMQ does
            self.channel.requeue([delivery_tag], counted=True)
        else:
            self.channel.acks.add(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked_once(self, stderr: Any = None) -> None:
        """kombu's, which restores only when its delivered list is non-empty; then the
        hand-back of everything held regardless: messages taken by a fetch whose reply
        was not yet delivered are in the holder's hash too."""
        super().restore_unacked_once(stderr)
        if self.channel.do_restore:
            self.channel.release()

    def restore_unacked(self, client: Any = None) -> list[Any]:
        """Hand back everything the channel holds (kombu calls this as it closes)."""
        self._flush()
        self._delivered.clear()
        self.channel.release()
        return []

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """The visibility timeout, now only the backstop for a live but stuck holder; and
        kombu's own `unacked` records, which workers of an earlier release may have left
        (killed before they could hand them back), restored as kombu would."""
        self.channel.restore_overdue()
        self._restore_kombu_unacked()

    def _restore_kombu_unacked(self) -> None:
        with self.channel.conn_or_acquire() as client:
            if not client.exists(self.unacked_index_key):
                return
            ceiling = time.time() - self.visibility_timeout
            for tag in client.zrangebyscore(self.unacked_index_key, "-inf", ceiling):
                kombu_redis.QoS.restore_by_tag(self, tag, client)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        self.channel.requeue([tag])


class ReliableChannel(kombu_redis.Channel):
    """A kombu Redis channel whose consumer takes messages with `FETCH`."""

    QoS = ReliableQoS

    from_transport_options = (  # type: ignore[assignment]  # a longer tuple than kombu's
        *kombu_redis.Channel.from_transport_options,
        "heartbeat_interval",
        "heartbeat_timeout",
        "delivery_limit",
        "idle_wait",
        "fetch_limit",
    )
    heartbeat_interval = 1.0
    heartbeat_timeout = 5.0
    delivery_limit = 5
    idle_wait = 0.2
    #: Messages one fetch may take when the channel has no prefetch limit.
    fetch_limit = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holder = new_holder_id()
        prefix = self.global_keyprefix or ""
        self._keys = {
            "holders": prefix + scripts.HOLDERS,
            "inhand": prefix + scripts.INHAND_PREFIX + self.holder,
            "inhand_prefix": prefix + scripts.INHAND_PREFIX,
            "sequence": prefix + scripts.SEQUENCE,
            "deliveries": prefix + scripts.DELIVERIES,
            "parked": prefix + scripts.PARKED_INFO,
            "rescued": prefix + scripts.RESCUED,
        }
        self._prefix = prefix
        # EVALSHA names a script by the sha1 of its text: no round trip to learn it. A
        # server that does not know a script yet (new, or restarted) says NOSCRIPT, and
        # the scripts are loaded then (`_load_scripts`).
        self._scripts = {name: _sha1(getattr(scripts, name)) for name in _SCRIPT_NAMES}
        self._idle = False
        self._consumed = False
        self._pending_command = "EVALSHA"
        self._fetch_keys: list[str] = []
        self._released = False
        self._taking = True
        self._no_ack_queues: set[str] = set()
        self.acks = AckBuffer(self._send_acks, scripts.ACK_CHUNK)
        self._heartbeat: Heartbeat | None = None
        self._beat_client: redis.Redis | None = None
        self._heartbeat_lock = threading.Lock()
        #: Bumped each time this holder learns it was declared dead: a batch being
        #: delivered stops there (its messages are another worker's now).
        self._fence = 0

    # -- scripts -------------------------------------------------------------------------

    def _load_scripts(self) -> None:
        with self.conn_or_acquire() as client:
            for name in _SCRIPT_NAMES:
                self._scripts[name] = client.script_load(getattr(scripts, name))

    def _run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], client: redis.Redis | None = None
    ) -> Any:
        """Run one script (on `client`, else the channel's command client); after a Redis
        restart (scripts forgotten) load them again.

        `redis.Redis.execute_command` directly: kombu's prefixing client would prefix
        the first key again (the keys here carry the prefix already).
        """
        with self.conn_or_acquire(client) as client:
            command = ("EVALSHA", self._scripts[name], len(keys), *keys, *args)
            try:
                return redis.Redis.execute_command(client, *command)
            except redis.exceptions.NoScriptError:
                self._load_scripts()
                command = ("EVALSHA", self._scripts[name], len(keys), *keys, *args)
                return redis.Redis.execute_command(client, *command)

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        """kombu's method, with the command client built once per channel and pool.

        kombu wraps its pool in a new `redis.Redis` for every command sent outside the
        consumer loop; with redis-py 8 that costs ~0.1 ms of CPU (its response-callback
        table), a few per job. The client holds no connection of its own (the pool does)
        and is safe to share between threads. A channel whose connection kombu already
        detached (it closes the channel again after a lost connection) cannot build one:
        that is a connection error, which the closing code ignores, not an AttributeError
        that ends the worker.
        """
        if client:
            yield client
            return
        if self._pool is None and getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("broker connection already closed")
        pool = self.pool
        cached: redis.Redis | None = self.__dict__.get("_command_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self._create_client()
            self.__dict__["_command_client"] = cached
        yield cached

    # -- taking ----------------------------------------------------------------------------

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """`basic_get`: one message, taken and recorded in one step like the consumer's."""
        self._start_heartbeat()
        keys = [self._prefix + self._q_for_pri(queue, pri) for pri in self.priority_steps]
        reply = self._run(
            "FETCH",
            [self._keys["holders"], self._keys["inhand"], self._keys["sequence"], *keys],
            [self.holder, 1, 1],
        )
        if not reply:
            raise Empty()
        self._consumed = True
        payload = envelope_or_refused(reply[2])
        payload["properties"]["delivery_tag"] = bytes_to_str(reply[0])
        return payload

    def stop_taking(self) -> None:
        """Take no more messages (a warm shutdown is handing back what it holds)."""
        self._taking = False

    def hand_back(self, delivery_tags: Sequence[str]) -> int:
        """Requeue these messages now, from any thread, and forget them: Celery defers a
        reject to its event loop, which a warm shutdown has stopped. No delivery is
        counted: no job ran them."""
        back = self.requeue(delivery_tags)
        for tag in delivery_tags:
            virtual.QoS.ack(self.qos, tag)
        return back

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._taking:
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        held, most = admission() if admission is not None else ((), None)
        if held:
            waiting = {queue for _, queue in held}
            queues = [queue for queue in queues if queue not in waiting]
        if not queues:
            return
        keys = [
            self._prefix + self._q_for_pri(queue, pri)
            for pri in self.priority_steps
            for queue in queues
        ]
        wanted = self.qos.can_consume_max_estimate() or self.fetch_limit
        if not self._idle and wanted < self._batch_floor():
            return  # enough in hand: wait until half the slots are free, then fill them
        if most is not None:
            wanted = min(wanted, most)
            if wanted < 1:
                return
        if not self._no_ack_queues.issuperset(queues):
            self._start_heartbeat()
        self._fetch_keys = keys
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu: None
        if self._idle:
            # Wake as soon as the first queue has a message, without taking it.
            self._pending_command = "BLMOVE"
            connection.send_command("BLMOVE", keys[0], keys[0], "RIGHT", "RIGHT", self.idle_wait)
            return
        self._pending_command = "EVALSHA"
        connection.send_command(
            "EVALSHA", self._scripts["FETCH"], 3 + len(keys),
            self._keys["holders"], self._keys["inhand"], self._keys["sequence"], *keys,
            self.holder, wanted, len(queues),
            *(part for prefix, queue in held for part in (prefix, self._prefix + queue)),
        )  # fmt: skip
        self._consumed = True

    def _batch_floor(self) -> int:
        """The fewest free prefetch slots worth a fetch while messages are in hand.

        Refilling every slot as soon as it frees costs a round trip per job under load;
        waiting for half of them keeps at least half the prefetch in hand (with Celery's
        default multiplier of 2, a message for every thread) and takes them in batches,
        as Dramatiq refills its prefetch cache only once it is empty. But an execution
        slot (a thread, a child process) with nothing to run is never kept waiting for
        the batch: the prefetch count Celery sets grows by one for each countdown it
        holds, so half of it can exceed every slot there is (`free_slots` tells).
        """
        prefetch: int = self.qos.prefetch_count or 0
        if not prefetch or not self.qos._delivered:
            return 1
        if free_slots is not None and free_slots() > 0:
            return 1
        return max(1, prefetch // 2)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """Remember the queues consumed without acknowledgements (Celery's replies to
        `inspect` and `ping`): what is taken from them is forgotten at once."""
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack:
            self.acks.add(message.delivery_tag)
        return message

    def _brpop_read(self, **options: Any) -> bool:
        command = self._pending_command
        try:
            try:
                reply = redis.Redis.parse_response(
                    self.client, self.client.connection, command, **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.exceptions.NoScriptError:
                self._load_scripts()
                raise Empty() from None
            if command == "BLMOVE":
                self._idle = False
                if not reply and len(self.active_queues) > 1:
                    self._queue_cycle.rotate(self._queue_cycle.consume(1)[0])
                raise Empty()
            if not reply:
                self._idle = True
                raise Empty()
            if len(reply) == 1:  # MORE_TO_MOVE: a job may wait behind the ones left
                raise Empty()
            self._deliver_batch(reply)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP":
            self._brpop_read(**options)
        else:
            super()._poll_error(type, **options)

    def _deliver_batch(self, reply: list[Any]) -> None:
        """Hand each taken message to its consumer; one that cannot be goes back. If
        this holder learns meanwhile that it was declared dead (the `solo` pool runs
        each job inside `_deliver`), the rest of the batch is not delivered: those the
        rescue gave to others are theirs, any taken after it go back to their queue."""
        undelivered: list[str] = []
        last_queue = None
        fence = self._fence
        for index in range(0, len(reply), 3):
            field = bytes_to_str(reply[index])
            if self._fence != fence:
                # Those rescued are skipped by REQUEUE; any taken after the rescue go back.
                undelivered.extend(bytes_to_str(tag) for tag in reply[index::3])
                log.error("this worker was declared dead: %d taken message(s) not yet "
                          "started are not run here", len(reply[index::3]))  # fmt: skip
                break
            key = self._fetch_keys[int(reply[index + 1])]
            queue = key[len(self._prefix) :].rsplit(self.sep, 1)[0]
            if queue not in self.connection._callbacks:
                undelivered.append(field)
                continue
            payload = envelope_or_refused(reply[index + 2])
            # The in-hand field is the delivery tag: unique, and what ack and requeue name.
            payload["properties"]["delivery_tag"] = field
            if queue in self._no_ack_queues:
                self.acks.add(field)
            try:
                self.connection._deliver(payload, queue)
            except Exception:
                log.exception("could not hand a message to its consumer: it goes back")
                undelivered.append(field)
            last_queue = queue
        if last_queue is not None:
            self._queue_cycle.rotate(last_queue)
        if undelivered:
            self.requeue(undelivered)

    # -- acknowledging and handing back -----------------------------------------------------

    def _send_acks(self, fields: list[str]) -> None:
        self._run("ACK", [self._keys["inhand"], self._keys["deliveries"]], fields)

    def requeue(self, fields: Sequence[str], *, counted: bool = False) -> int:
        """Put these in-hand messages back at the head of their queues; how many went.

        `counted`: each was a delivery that ended without an acknowledgement (a reject
        with requeue), which counts toward the delivery limit, and parks the message
        past it. Not counted: messages no job started (a hand-back)."""
        reply = self._run(
            "REQUEUE",
            [self._keys["inhand"], self._keys["deliveries"], self._keys["parked"]],
            [1 if counted else 0, self.delivery_limit, scripts.DEAD_SUFFIX, *fields],
        )
        self._report_parked(reply, 1)
        return int(reply[0])

    def release(self) -> None:
        """Hand back everything held and leave: the pending acks are sent first, so a
        job acknowledged before the channel closed does not return. (If Redis refuses
        them, those jobs return with the rest: run again rather than lost.) The
        heartbeat stops once the holder has left."""
        if self._released or not self._consumed:
            self._stop_heartbeat()
            return
        self._released = True
        # First the heartbeat, waiting out a beat in flight: a beat landing after the
        # release would put this holder back among the living.
        self._stop_heartbeat()
        try:
            self.acks.close()
            back = self._run("RELEASE", [self._keys["holders"], self._keys["inhand"]],
                             [self.holder])  # fmt: skip
        except (*self.connection_errors, AttributeError):
            # Redis away (or the connection already detached): the next channel of
            # this process hands them back once Redis answers.
            with _orphans_lock:
                _orphans.add(self.holder)
            log.warning("Redis unreachable as a channel closed: its messages go back to "
                        "their queues when this worker reconnects")  # fmt: skip
            return
        finally:
            self._stop_heartbeat()
        if back:
            log.info("handed %d message(s) back to their queues", back)

    # -- liveness ---------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        """From the first fetch of a queue whose messages are acknowledged until
        `release`: this holder's heartbeat, on a thread and a connection of its own
        (brokers/redis_threads.py), whatever the pool.

        A channel that only reads queues consumed without acknowledgements (Celery's
        replies to `ping` and `inspect`, in a producer, the CLI or Flower) holds no job
        and starts none: a heartbeat also judges other holders, putting back or parking
        their messages by this channel's own delivery limit and timeouts, and a client
        that merely asked a question must not judge workers by settings that are not
        theirs (a producer's default limit of 5 let a job past a fleet's limit of 2)."""
        if self._heartbeat is not None or self._released:
            return
        with self._heartbeat_lock:
            if self._heartbeat is not None:
                return
            self._beat_client = redis.Redis(connection_pool=self._get_pool())
            self._heartbeat = Heartbeat(
                self.heartbeat,
                self.heartbeat_interval,
                name=f"redis-heartbeat-{self.holder}",
                unreachable=tuple(self.connection_errors),
            )
            self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        with self._heartbeat_lock:
            heartbeat, self._heartbeat = self._heartbeat, None
            client, self._beat_client = self._beat_client, None
        if heartbeat is not None:
            heartbeat.stop()
        if client is not None:
            client.connection_pool.disconnect()

    def heartbeat(self) -> None:
        """Say this holder lives; put back (or park) the messages of dead ones, if this
        holder's own view is fresh (brokers/redis_scripts.py, HEARTBEAT, says when)."""
        self._release_orphans()
        reply = self._run(
            "HEARTBEAT",
            [self._keys["holders"], self._keys["deliveries"], self._keys["parked"],
             self._keys["rescued"]],
            [self.holder, int(self.heartbeat_timeout * 1000), self.delivery_limit,
             self._keys["inhand_prefix"], scripts.DEAD_SUFFIX,
             int(self.heartbeat_timeout * 1000 / 2)],
            client=self._beat_client,
        )  # fmt: skip
        status, requeued = int(reply[0]), int(reply[1])
        if status == 2:
            self._declared_dead()
        if requeued:
            log.warning("put %d message(s) of a dead worker back on their queues", requeued)
        self._report_parked(reply, 2)

    def _declared_dead(self) -> None:
        """Another worker took this holder for dead (it was paused longer than the
        heartbeat timeout) and put its messages back: they are others' now. Said loudly;
        a batch being delivered stops (`_deliver_batch`), and `on_declared_dead` callbacks
        drop the jobs handed to the pool but not started. A job already running
        finishes; its ack changes nothing in Redis."""
        self._fence += 1
        held = _keys_of(self.qos._delivered)
        log.error("this worker was declared dead (no heartbeat for over %gs): the %d "
                  "message(s) it held went back to their queues for other workers",
                  self.heartbeat_timeout, len(held))  # fmt: skip
        for callback in on_declared_dead:
            try:
                callback(self)
            except Exception:
                log.exception("an on_declared_dead callback failed")

    def _report_parked(self, reply: list[Any], start: int) -> None:
        for index in range(start, len(reply), 3):
            key = bytes_to_str(reply[index])[len(self._prefix) :]
            queue = key.rsplit(self.sep, 1)[0]
            item: bytes = reply[index + 1]
            deliveries = int(reply[index + 2])
            log.error("parked a message in %s%s after %d deliveries that each ended "
                      "without an acknowledgement", queue, scripts.DEAD_SUFFIX,
                      deliveries)  # fmt: skip
            for callback in on_parked:
                try:
                    callback(queue, item, deliveries)
                except Exception:
                    log.exception("an on_parked callback failed")

    def _release_orphans(self) -> None:
        with _orphans_lock:
            orphans = list(_orphans)
        for holder in orphans:
            inhand = self._keys["inhand_prefix"] + holder
            back = self._run("RELEASE", [self._keys["holders"], inhand], [holder],
                             client=self._beat_client)  # fmt: skip
            with _orphans_lock:
                _orphans.discard(holder)
            if back:
                log.warning("put back %d message(s) taken before the broker connection "
                            "dropped", back)  # fmt: skip

    def restore_overdue(self) -> None:
        """The visibility timeout: messages held longer go back, each a delivery counted."""
        reply = self._run(
            "VISIBILITY",
            [self._keys["holders"], self._keys["deliveries"], self._keys["parked"]],
            [int(self.visibility_timeout * 1000), self._keys["inhand_prefix"],
             self.delivery_limit, scripts.DEAD_SUFFIX],
        )  # fmt: skip
        if int(reply[0]):
            log.warning("put back %d message(s) held longer than the visibility timeout",
                        int(reply[0]))  # fmt: skip
        self._report_parked(reply, 1)

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        self.requeue([message.delivery_tag])

    def close(self) -> None:
        """Close, handing back everything this holder has in hand, delivered or not
        (kombu restores only when its delivered list is non-empty, and may deliver a
        last fetch's reply as it closes)."""
        if not self.closed:
            # A detached connection: release() records the holder as an orphan.
            with contextlib.suppress(AttributeError):
                self.acks.drain()
            if self._consumed:
                self.qos  # noqa: B018  # made now if never asked for: closing restores through it
        super().close()


class ReliableSentinelChannel(ReliableChannel, kombu_redis.SentinelChannel):
    """The same fetch, with the master found through Redis Sentinel."""

    from_transport_options = (
        ReliableChannel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options  # type: ignore[assignment]
    )


def _keys_of(delivered: Any) -> list[str]:
    """The delivery tags of kombu's delivered dict, read from another thread."""
    for _ in range(5):
        try:
            return list(delivered)
        except RuntimeError:  # changed size while read: read again
            continue
    return []


class Transport(kombu_redis.Transport):
    Channel = ReliableChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = ReliableSentinelChannel


def install() -> None:
    """Make `redis://`, `rediss://` and `sentinel://` URLs use this transport, in this
    process. kombu resolves a URL's scheme through its alias table, so a transport class
    named in Celery's settings would be ignored for a URL that has a scheme; and it
    caches each resolution, so one made before this call is dropped."""
    module = __name__
    aliases = {
        "redis": f"{module}:Transport",
        "rediss": f"{module}:Transport",
        "sentinel": f"{module}:SentinelTransport",
    }
    kombu_transport.TRANSPORT_ALIASES.update(aliases)
    for scheme in aliases:
        kombu_transport._transport_cache.pop(scheme, None)
