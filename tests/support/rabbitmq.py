"""Disposable RabbitMQ virtual hosts for the suite.

The suite never uses the server's default vhost `/` (another service's queues live
there): each run, and each chaos deployment, gets a vhost of its own, made and deleted
with the server's own tool (`rabbitmqctl`) or, for a server named by TEST_AMQP_URL on
another host, through its management API (TEST_AMQP_MANAGEMENT_URL, default the same
host on port 15672).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import requests

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
RABBITMQCTL_TIMEOUT = 60


class RabbitUnavailable(RuntimeError):
    """No RabbitMQ answers where the suite looks for one."""


@dataclass(frozen=True)
class RabbitServer:
    """A RabbitMQ server the suite may create vhosts on."""

    url: str  # without a vhost path
    management_url: str | None  # None: manage it with the local rabbitmqctl

    @classmethod
    def from_environment(cls) -> RabbitServer:
        given = os.environ.get("TEST_AMQP_URL")
        url = given or DEFAULT_AMQP_URL
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise RuntimeError("TEST_AMQP_URL names a server, not a vhost: drop its path")
        host, port = parts.hostname or "127.0.0.1", parts.port or 5672
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            raise RabbitUnavailable(f"no RabbitMQ at {host}:{port} ({exc})") from exc
        management = None
        if given:
            management = os.environ.get("TEST_AMQP_MANAGEMENT_URL") or urlunsplit(
                ("http", f"{parts.username or 'guest'}:{parts.password or 'guest'}@{host}:15672",
                 "", "", "")
            )  # fmt: skip
        elif shutil.which("rabbitmqctl") is None:
            raise RabbitUnavailable("rabbitmqctl is not installed to make test vhosts")
        return cls(url.rstrip("/"), management)

    @property
    def user(self) -> str:
        return urlsplit(self.url).username or "guest"

    def create_vhost(self) -> str:
        """A new, empty vhost the suite's user may use; returns its AMQP URL."""
        name = f"apiworker-test-{uuid.uuid4().hex[:10]}"
        if self.management_url is None:
            _rabbitmqctl("add_vhost", name)
            _rabbitmqctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")
        else:
            self._management("put", f"vhosts/{quote(name, safe='')}")
            self._management(
                "put",
                f"permissions/{quote(name, safe='')}/{quote(self.user, safe='')}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            )
        return f"{self.url}/{quote(name, safe='')}"

    def delete_vhost(self, vhost_url: str) -> None:
        name = vhost_of(vhost_url)
        assert name != "/", "never the default vhost"
        if self.management_url is None:
            _rabbitmqctl("delete_vhost", name)
        else:
            self._management("delete", f"vhosts/{quote(name, safe='')}")

    def queue_counts(self, vhost_url: str) -> dict[str, tuple[int, int]]:
        """Each queue's (ready, unacknowledged) messages, as the server counts them now."""
        name = vhost_of(vhost_url)
        if self.management_url is None:
            output = _rabbitmqctl(
                "list_queues", "-p", name, "--no-table-headers", "--quiet",
                "name", "messages_ready", "messages_unacknowledged",
            )  # fmt: skip
            rows = (line.split("\t") for line in output.splitlines() if line.strip())
            return {row[0]: (int(row[1]), int(row[2])) for row in rows}
        answer = self._management("get", f"queues/{quote(name, safe='')}")
        return {
            queue["name"]: (queue.get("messages_ready", 0), queue.get("messages_unacknowledged", 0))
            for queue in answer.json()
        }

    def _management(self, method: str, path: str, **kwargs: object) -> requests.Response:
        assert self.management_url is not None
        parts = urlsplit(self.management_url)
        base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
        answer = requests.request(
            method, f"{base}/api/{path}", auth=(parts.username or "guest", parts.password or ""),
            timeout=30, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        answer.raise_for_status()
        return answer


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return "/" if path in ("", "/") else requests.utils.unquote(path[1:])


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=RABBITMQCTL_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout
