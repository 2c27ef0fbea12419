"""The deadline watchdog: it shuts the socket of an exchange past its deadline, and only
that one."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from types import SimpleNamespace

from apis import deadline


def test_a_read_blocked_past_the_deadline_returns_when_the_socket_is_shut() -> None:
    """recv() with no timeout, nothing sent: the watchdog ends it at the deadline."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        started = time.monotonic()
        with deadline.exchange(started + 0.3) as watched:
            watched.attach(SimpleNamespace(sock=ours))  # type: ignore[arg-type]
            assert ours.recv(10) == b""  # end of stream, not a hang
            assert deadline.end(watched)  # reported as cut short
        assert time.monotonic() - started < 0.3 + 1


def test_an_exchange_ended_in_time_leaves_its_socket_alone() -> None:
    """After `end`, the connection may serve another call: the watchdog must not shut it,
    even once its deadline is long past (proved by a later exchange it did cut)."""
    ours, theirs = socket.socketpair()
    probe, probe_peer = socket.socketpair()
    with ours, theirs, probe, probe_peer:
        with deadline.exchange(time.monotonic() + 0.1) as watched:
            watched.attach(SimpleNamespace(sock=ours))  # type: ignore[arg-type]
            assert not deadline.end(watched)
        with deadline.exchange(time.monotonic() + 0.3) as later:
            later.attach(SimpleNamespace(sock=probe))  # type: ignore[arg-type]
            assert probe.recv(10) == b""  # the watchdog ran, past both deadlines
        theirs.sendall(b"still here")
        ours.settimeout(2)
        assert ours.recv(10) == b"still here"
        assert not watched.expired


def test_calls_ending_in_order_leave_nothing_behind() -> None:
    """Each ended entry at the heap's top is dropped at once: no growth per call."""
    for _ in range(1000):
        with deadline.exchange(time.monotonic() + 30) as watched:
            deadline.end(watched)
    assert len(deadline._watchdog._heap) == 0


def test_a_tls_handshake_that_never_comes_ends_at_the_deadline() -> None:
    """A server that accepts and says nothing: the handshake's reads are each allowed the
    connect timeout (10 s here), the whole exchange only its deadline."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        connection = deadline.DeadlineHTTPSConnection(
            "127.0.0.1", port, timeout=10, cert_reqs="CERT_NONE"
        )
        started = time.monotonic()
        try:
            with deadline.exchange(started + 0.3) as watched:
                with contextlib.suppress(OSError, ssl.SSLError):
                    connection.connect()
                assert deadline.end(watched)
        finally:
            connection.close()
        assert time.monotonic() - started < 0.3 + 1
