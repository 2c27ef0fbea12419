"""A private Redis Sentinel deployment for the suite: a master, a replica, three sentinels.

Everything runs from the `redis-server` binary on loopback (`redis-server sentinel.conf
--sentinel`), with a short down-after so that a killed master is replaced in seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from ops.processes.children import popen
from tests.support.celery_worker import wait_for
from tests.support.redis_server import RedisServer, free_port, terminate

MASTER_NAME = "apiworker"


class SentinelProcess:
    """One `redis-server sentinel.conf --sentinel` watching `MASTER_NAME`."""

    def __init__(
        self,
        master_port: int,
        *,
        quorum: int,
        down_after_ms: int,
        extra_config: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="apiworker-sentinel-"))
        self.config = self.dir / "sentinel.conf"
        # Sentinel rewrites its configuration file (the epochs, the other sentinels, the
        # new master), so each one has a file of its own.
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {max(3000, down_after_ms * 3)}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
            *extra_config,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.process = popen(
            [self.binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=1, socket_connect_timeout=1
        )

    def log(self) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelDeployment:
    """A master with an append-only file, one replica and `count` sentinels (quorum 2).

    With `password`, the data nodes require it (and replicate with it); with
    `sentinel_password`, the sentinels require theirs and use it among themselves.
    """

    def __init__(
        self,
        *,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.master = RedisServer(appendonly=True)
        self.replica = RedisServer(
            appendonly=True, args=("--replicaof", "127.0.0.1", str(self.master.port))
        )
        auth: list[str] = []
        if password:
            auth.append(f"sentinel auth-pass {MASTER_NAME} {password}")
        if sentinel_password:
            auth += [
                f"requirepass {sentinel_password}",
                f"sentinel sentinel-pass {sentinel_password}",
            ]
        self.sentinels = [
            SentinelProcess(
                self.master.port,
                quorum=quorum,
                down_after_ms=down_after_ms,
                extra_config=tuple(auth),
                password=sentinel_password,
            )
            for _ in range(sentinels)
        ]
        self.servers = {self.master.port: self.master, self.replica.port: self.replica}

    def start(self, timeout: float = 30.0) -> SentinelDeployment:
        self.master.start()
        self.replica.start()
        if self.password:
            # Set once both answer (the readiness check speaks without a password).
            for server in (self.replica, self.master):
                client = redis.Redis(port=server.port)
                client.config_set("masterauth", self.password)
                client.config_set("requirepass", self.password)
                client.close()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until(self._ready, timeout, "replica in sync and every sentinel aware")
        return self

    @property
    def env(self) -> dict[str, str]:
        """The worker's settings for this deployment: Sentinel only, no REDIS_URL."""
        env = {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
        }
        if self.password:
            env["REDIS_PASSWORD"] = self.password
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def client(self, port: int, **options: object) -> redis.Redis:
        """A client of one data node (master or replica), with its password."""
        return redis.Redis(port=port, password=self.password, **options)  # type: ignore[arg-type]

    def master_port(self) -> int | None:
        """The master's port as a sentinel that answers names it."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def role(self, port: int) -> str | None:
        client = self.client(port, socket_timeout=1, socket_connect_timeout=1)
        try:
            info = client.info("replication")
            return str(info["role"])
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def _ready(self) -> bool:
        replica = self.client(self.replica.port, socket_timeout=1)
        try:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        finally:
            replica.close()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(MASTER_NAME)
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            others = int(state.get("num-other-sentinels", 0))
            if others < len(self.sentinels) - 1 or int(state.get("num-slaves", 0)) < 1:
                return False
        return True

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port."""
        port = self.master_port()
        assert port is not None, "no sentinel names a master"
        self.servers[port].kill()
        return port

    def wait_promoted(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name another master and it acts as one."""

        def promoted() -> int | None:
            port = self.master_port()
            if port is not None and port != old_port and self.role(port) == "master":
                return port
            return None

        found = self.wait_until(promoted, timeout, "a replica promoted")
        assert isinstance(found, int)
        return found

    def wait_until(self, predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
        """`wait_for`, with the sentinels' logs in the error: they say why nothing moved."""
        try:
            return wait_for(predicate, timeout=timeout, what=what)
        except TimeoutError as exc:
            logs = "\n".join(s.log()[-2000:] for s in self.sentinels)
            raise TimeoutError(f"{exc}\n{logs}") from None

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        self.master.cleanup()
        self.replica.cleanup()
