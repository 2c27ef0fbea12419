"""A private, disposable redis-server for the suite (ops/processes/redis_server.py starts it).

Tests must never touch a shared Redis (another service's data lives there), and some
tests kill and restart the server on purpose, so each suite run owns its instance.
"""

from __future__ import annotations

import subprocess

from ops.processes.children import stop_process
from ops.processes.ports import free_port
from ops.processes.redis_server import DisposableRedis

__all__ = ["RedisServer", "free_port", "terminate"]


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a clean shutdown: the server flushes its files), SIGKILL after 10 s."""
    stop_process(process, timeout=10)


class RedisServer(DisposableRedis):
    """One redis-server process on loopback, started and stopped by its owner."""

    missing = (
        "redis-server is not installed: install it (apt-get install redis-server) "
        "or set TEST_REDIS_URL to a disposable Redis"
    )

    def start(self, timeout: float = 10.0) -> RedisServer:
        super().start(timeout)
        return self
