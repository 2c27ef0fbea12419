"""The two threads of the Redis broker's reliable fetch: the heartbeat and the ack flusher.

Both run beside Celery's event loop, not on it: the loop stops at a warm shutdown while
jobs still run, the `solo` pool runs each job on the loop's own thread, and the green
pools have no loop timer of the kind at all. A thread of its own beats whatever the
pool, for as long as its channel holds messages. (Under gevent or eventlet's monkey
patching these become green threads: they beat whenever a job yields, which an I/O
bound job does at every request.)

Hand-written rather than a library's: the flusher merges the acks that arrive while a
batch is in flight into the next one, which a retry decorator (tenacity) around one call
cannot do; the heartbeat is a loop on an `Event`, with nothing left to delegate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("brokers.redis_transport")


class Heartbeat:
    """Call `beat` every `interval` seconds on a daemon thread, from `start` to `stop`.

    The first beat is sent at once. A beat that raises is logged and the next one comes
    at its time: a Redis away for a while leaves the holder's last heartbeat where it
    was, which is what the others should see. `unreachable` errors (Redis away) are
    logged at debug level, as the connection's own errors say it elsewhere; any other
    with its traceback.
    """

    def __init__(
        self,
        beat: Callable[[], None],
        interval: float,
        name: str,
        unreachable: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._beat = beat
        self._interval = interval
        self._unreachable = unreachable
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Send no more beats (waits up to `timeout` for one in flight, unless called
        from the beating thread itself)."""
        self._stopped.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                self._beat()
            except self._unreachable:
                log.debug("heartbeat: Redis unreachable, trying again", exc_info=True)
            except Exception:
                log.warning("heartbeat failed; the next one follows", exc_info=True)
            self._stopped.wait(max(0.0, self._interval - (time.monotonic() - started)))


class AckBuffer:
    """Acknowledgements on their way to Redis, sent in batches by one flusher thread.

    While one batch is in flight the next gathers, so under load many acks share a round
    trip and an idle worker's single ack leaves at once. A batch is sent in chunks of at
    most `chunk` fields (one script call each: Lua's `unpack` has a limit). A chunk that
    fails, for any reason (Redis away, `READONLY` after a failover, `MISCONF`, `NOPERM`
    or anything else), is kept with the rest of the batch, logged, and sent again after
    a backoff that doubles up to `MAX_RETRY_SECONDS`; the thread never dies of it. If the
    process dies first, those jobs run again, as any job in flight would.
    """

    RETRY_SECONDS = 0.5
    MAX_RETRY_SECONDS = 5.0

    def __init__(self, send: Callable[[list[str]], None], chunk: int) -> None:
        self._send = send
        self._chunk = chunk
        self._pending: list[str] = []
        self._wake = threading.Condition()
        self._sending = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._retry = self.RETRY_SECONDS

    def add(self, field: str) -> None:
        with self._wake:
            self._pending.append(field)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="redis-acks", daemon=True)
                self._thread.start()
            self._wake.notify()
        if self._closed:  # a job that ended after its channel closed
            self.drain()

    @property
    def pending(self) -> int:
        with self._wake:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
            if self._flush():
                self._retry = self.RETRY_SECONDS
                continue
            with self._wake:
                self._wake.wait(self._retry)
            self._retry = min(self._retry * 2, self.MAX_RETRY_SECONDS)

    def _flush(self) -> bool:
        with self._sending:
            with self._wake:
                batch, self._pending = self._pending, []
            sent = 0
            try:
                while sent < len(batch):
                    self._send(batch[sent : sent + self._chunk])
                    sent += len(batch[sent : sent + self._chunk])
            except Exception as exc:
                with self._wake:
                    self._pending[:0] = batch[sent:]
                log.warning("%d acknowledgement(s) not sent (%s: %s); kept, sent again "
                            "shortly", len(batch) - sent, type(exc).__name__, exc)  # fmt: skip
                return False
            return True

    def drain(self) -> bool:
        """Send what is pending now, in the caller's thread; False if Redis refused."""
        return self._flush()

    def close(self) -> bool:
        """Stop the thread and send what is pending in the caller's thread; False if it
        could not be sent (it stays pending)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        return self._flush()
