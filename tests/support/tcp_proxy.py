"""A TCP forwarder on loopback whose connections a test can cut at once, as a network
cut or a node's restart does to a client.

Asking the server to close its clients (`rabbitmqctl close_all_connections`) starts an
Erlang VM first: seconds on a quiet machine, over ten on a loaded one, during which the
jobs a test means to catch waiting in hand have started. A cut here takes a few
milliseconds. Toxiproxy does the same, as a server binary this machine does not have;
the few lines below need nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` closes every connection open now
    and keeps accepting new ones, so a client reconnects through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy in front of `url`'s host and port, and the same URL through it."""
        parts = urlsplit(url)
        proxy = cls((parts.hostname or "127.0.0.1", parts.port or 5672))
        credentials = parts.netloc.rpartition("@")[0]
        address = f"127.0.0.1:{proxy.port}"
        netloc = f"{credentials}@{address}" if credentials else address
        return proxy, urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> int:
        """Close both ends of every connection open now; how many client connections."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for each in sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()
        return len(sockets) // 2

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy one direction until either end closes; then close both."""
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._open -= {source, sink}
