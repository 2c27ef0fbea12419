"""`make run`'s private Redis keeps its port across restarts (6380, as the README says)."""

from __future__ import annotations

import socket

from ops.processes.ports import port_is_free


def _listener() -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free() -> None:
    """A server that closed its clients' connections first (redis-server at shutdown)
    leaves TIME_WAIT entries on its port; the next run may bind it, so it is free."""
    server = _listener()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its port enters TIME_WAIT
    client.recv(1)  # the peer's FIN has arrived
    client.close()
    server.close()
    assert port_is_free(port)


def test_a_port_a_server_listens_on_is_taken() -> None:
    """SO_REUSEADDR does not let a second server onto a listening port."""
    server = _listener()
    try:
        assert not port_is_free(server.getsockname()[1])
    finally:
        server.close()
