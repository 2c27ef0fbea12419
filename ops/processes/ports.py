"""Free loopback ports for the servers the harness starts."""

from __future__ import annotations

import socket
from collections.abc import Iterable

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when `port` can be bound on `host`, so a server we start there gets it.

    Bound as servers bind (redis-server, Tornado for Flower): with SO_REUSEADDR, so the
    TIME_WAIT connections a just-stopped server leaves on its port do not count as taken,
    while a server listening there still does. Without it, a `make run` restarted within
    a minute found 6380 "taken" and moved its Redis to 6381.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def first_free_port(candidates: Iterable[int], host: str = LOOPBACK) -> int:
    """The first free port of `candidates` (a stable, guessable address), else any."""
    for port in candidates:
        if port_is_free(port, host):
            return port
    return free_port(host)
