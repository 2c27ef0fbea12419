"""One deadline for a whole HTTP exchange, enforced on its socket.

urllib3's timeouts are per socket operation: a server that sends a byte of its headers,
of a chunk-size line or of a trailer just inside the read timeout holds the calling
thread for as long as it likes (21.6 s with a 2 s read timeout, until the server
stopped), and a trailer flood keeps it busy parsing lines. Neither urllib3 nor
http.client has a deadline for the whole response, and checking the clock between our
own reads cannot help while one of their reads is still parsing. So one daemon thread
per process (the watchdog) keeps the deadlines of the exchanges in flight, and when one
passes it shuts the exchange's socket down: the blocked read returns at once, with
whatever urllib3 makes of an early close, which the client reports as a timeout.

Hand-written because no library offers this for a blocking client: httpx and aiohttp
have whole-request timeouts only in their async APIs (cancellation), and urllib3's
`Timeout(total=...)` leaves each read the time the connect left, per read. A thread
per exchange (`threading.Timer`) would cost a thread start per call; the watchdog costs
a heap push and, at worst, one wake-up.

The connection classes of the client's pools attach themselves to the exchange in
progress on their thread (a context variable), so the watchdog knows which socket to
shut. The exchange is ended before the connection goes back to the pool, under the same
lock the watchdog shuts sockets under, so it never shuts a connection another call has
taken since.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current: ContextVar[Exchange | None] = ContextVar("apis_exchange", default=None)


class Exchange:
    """One request and its response, due by `deadline` (`time.monotonic()`)."""

    __slots__ = ("_handshake", "_sock", "deadline", "ended", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False  # the watchdog shut its socket: whatever it read is cut short
        self.ended = False
        self._sock: socket.socket | None = None
        # A duplicate of a new connection's TCP socket, held while TLS is set up: the
        # TLS wrapper takes the original's file descriptor over (`detach`), so only a
        # descriptor of our own can still shut the connection during the handshake.
        self._handshake: socket.socket | None = None

    def attach(self, connection: HTTPConnection) -> None:
        """Remember the connection's socket (kept here: http.client drops `sock` from a
        connection whose answer says `Connection: close`, while still reading from it)."""
        sock = connection.sock
        if sock is None:
            return
        with _watchdog.lock:
            if self.ended:
                return
            self._sock = sock
            if self.expired:
                _shut(sock)  # expired before the socket was known (during connect)

    def attach_new(self, sock: socket.socket) -> None:
        """A connection's TCP socket, just connected, before any TLS handshake."""
        with _watchdog.lock:
            if self.ended:
                return
            self._close_handshake()
            self._handshake = sock.dup()
            if self.expired:
                _shut(self._handshake)

    def _close_handshake(self) -> None:
        if self._handshake is not None:
            self._handshake.close()
            self._handshake = None

    def _expire(self) -> None:
        """Called by the watchdog, under its lock."""
        if self.ended:
            return
        self.expired = True
        for sock in (self._sock, self._handshake):
            if sock is not None:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, not SSLSocket's (which also drops its TLS state under
    # the reading thread): the reader sees end-of-stream and returns.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """The process's one thread that expires exchanges past their deadline."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._heap: list[tuple[float, int, Exchange]] = []
        self._order = itertools.count()
        self._pid = 0
        self._sleeping_until = -math.inf  # not started: the first add must wake it

    def add(self, exchange: Exchange) -> None:
        with self.lock:
            if self._pid != os.getpid():
                self._start()
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            # Woken only when this deadline comes before the one it sleeps until: calls
            # that end in time leave their entries to be dropped when it next wakes, so
            # a steady stream of calls costs about one wake-up per total deadline, not
            # one per call.
            if exchange.deadline < self._sleeping_until:
                self._wake.notify()

    def end(self, exchange: Exchange) -> bool:
        """Mark `exchange` over; True when the watchdog had already cut it short."""
        with self.lock:
            exchange.ended = True
            exchange._sock = None
            exchange._close_handshake()
            # Ended entries at the top go now, so calls that end in order (most do) keep
            # the heap a few entries long between the watchdog's rare wake-ups.
            while self._heap and self._heap[0][2].ended:
                heapq.heappop(self._heap)
            return exchange.expired

    def _start(self) -> None:
        # In a forked child the parent's thread does not exist: start this process's own.
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="apis-deadline-watchdog", daemon=True).start()

    def _run(self) -> None:
        pid = os.getpid()
        with self.lock:
            while self._pid == pid:
                while self._heap and self._heap[0][2].ended:
                    heapq.heappop(self._heap)  # finished in time: nothing to do
                if not self._heap:
                    self._sleeping_until = math.inf
                    self._wake.wait()
                    continue
                due = self._heap[0][0]
                if due > time.monotonic():
                    self._sleeping_until = due
                    self._wake.wait(due - time.monotonic())
                    continue
                heapq.heappop(self._heap)[2]._expire()

    def _after_fork(self) -> None:
        """A forked child starts empty: the parent's exchanges, and their sockets (shared
        with the parent), are the parent's to watch."""
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._heap = []
        self._sleeping_until = -math.inf


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._after_fork)


@contextlib.contextmanager
def exchange(deadline: float) -> Iterator[Exchange]:
    """Watch the exchange made inside the block; the caller calls `end` before it hands
    the connection back (`end` is idempotent, and is called again on the way out)."""
    watched = Exchange(deadline)
    _watchdog.add(watched)
    token = _current.set(watched)
    try:
        yield watched
    finally:
        _current.reset(token)
        _watchdog.end(watched)


def end(watched: Exchange) -> bool:
    """The exchange is over (its connection about to be released or closed); True when
    its deadline passed first, so what was read of it is cut short."""
    return _watchdog.end(watched)


class _Attached:
    """Connection mixin: join the exchange in progress on this thread, if any."""

    def _new_conn(self) -> socket.socket:
        # The TCP socket, as soon as it exists: a TLS handshake dripped by the server
        # is then under the deadline too. (urllib3's own hook, hence the bound below 3.)
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        watched = _current.get()
        if watched is not None:
            watched.attach_new(sock)
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._attach()

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)  # type: ignore[misc]
        self._attach()  # the socket the answer will be read from

    def _attach(self) -> None:
        watched = _current.get()
        if watched is not None:
            watched.attach(self)  # type: ignore[arg-type]


class DeadlineHTTPConnection(_Attached, HTTPConnection):
    """An HTTP connection whose socket the watchdog can shut."""


class DeadlineHTTPSConnection(_Attached, HTTPSConnection):
    """An HTTPS connection whose socket the watchdog can shut."""


class DeadlineHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection


class DeadlineHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection


POOL_CLASSES = {"http": DeadlineHTTPConnectionPool, "https": DeadlineHTTPSConnectionPool}
