"""RabbitMQ's management API (HTTP), for what AMQP cannot tell or set.

AMQP has no way to ask how many messages are delivered but unacknowledged, which nodes
of a cluster are down, which nodes hold a quorum queue's replicas and which leads, nor to
set a policy. The management API of any running node answers for the whole cluster, so
`RABBITMQ_MANAGEMENT_URL` may name several nodes, separated by `;` (as a failover broker
URL is) or `,`: each is tried in turn until one answers.

https://www.rabbitmq.com/docs/management#http-api
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from brokers.base import BrokerError, ClusterView, NodeState, QueueReplicas
from telemetry.redact import masked_url

if TYPE_CHECKING:
    import requests

#: Seconds one node may take to answer before the next is asked.
DEFAULT_TIMEOUT = 5.0


def split_urls(urls: str) -> list[str]:
    """The URLs of a `;`- or `,`-separated list, in order, blanks dropped."""
    return [url.strip() for url in re.split(r"[;,]", urls) if url.strip()]


class ManagementApi:
    """The management API of a cluster, reached through the first node that answers."""

    def __init__(self, urls: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._bases: list[tuple[str, tuple[str, str]]] = []
        for url in split_urls(urls):
            parts = urlsplit(url)
            if not parts.username:
                # No silent `guest`: it logs in only from the node's own host, and an
                # operator who meant another user should hear which URL lacks one.
                raise BrokerError(f"{masked_url(url)}: the management URL names no user")
            # Percent-encoded in the URL (`p%40ss` for `p@ss`), as in the broker URL.
            auth = (unquote(parts.username), unquote(parts.password or ""))
            host = parts.hostname or "localhost"
            netloc = f"{host}:{parts.port}" if parts.port else host
            self._bases.append((f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}", auth))
        if not self._bases:
            raise BrokerError("RABBITMQ_MANAGEMENT_URL names no URL")
        self.display_url = ";".join(masked_url(url) for url in split_urls(urls))
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """`method` on `/api/{path}` of the first node that answers; an HTTP error status
        is returned as it is (the caller knows which ones it expects)."""
        # Imported here: only the CLI calls the management API, and requests costs every
        # worker process ~4.5 MiB (docs/performance.md, "Per-job cost").
        import requests

        problems = []
        for base, auth in self._bases:
            try:
                return requests.request(
                    method, f"{base}/api/{path}", auth=auth, timeout=self.timeout, **kwargs
                )
            except requests.RequestException as exc:
                problems.append(f"{urlsplit(base).netloc}: {type(exc).__name__}")
        raise BrokerError(f"RabbitMQ management API: no node answered ({'; '.join(problems)})")

    def get_json(self, path: str) -> Any:
        answer = self.request("get", path)
        if answer.status_code != 200:
            raise BrokerError(f"RabbitMQ management API answered {answer.status_code} to {path}")
        return answer.json()

    # -- what the operator reads ---------------------------------------------------------

    def _object(self, path: str) -> dict[str, Any] | None:
        """One object of the API; None when it does not exist (404)."""
        answer = self.request("get", path)
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise BrokerError(f"RabbitMQ management API answered {answer.status_code}")
        found: dict[str, Any] = answer.json()
        return found

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """The queue's figures and replicas; None when it was never declared."""
        return self._object(f"queues/{_q(vhost)}/{_q(name)}")

    def cluster(self, vhost: str, queues: Sequence[str]) -> ClusterView:
        """Every node of the cluster (running or not), and each queue's replicas."""
        nodes = tuple(
            NodeState(str(node["name"]), bool(node.get("running")))
            for node in self.get_json("nodes")
        )
        replicas = []
        for name in queues:
            found = self.queue(vhost, name) or {}
            replicas.append(
                QueueReplicas(
                    name,
                    members=tuple(found.get("members") or ()),
                    online=tuple(found.get("online") or ()),
                    leader=found.get("leader") or None,
                    policy=found.get("policy") or None,
                    effective=found.get("effective_policy_definition") or {},
                )
            )
        return ClusterView(nodes, tuple(replicas))

    # -- what the operator sets ----------------------------------------------------------

    def version(self) -> tuple[int, ...]:
        """The server's RabbitMQ version, as numbers (`3.10.8` is (3, 10, 8))."""
        text = str(self.get_json("overview").get("rabbitmq_version", "0"))
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    def vhost(self, vhost: str) -> dict[str, Any] | None:
        return self._object(f"vhosts/{_q(vhost)}")

    def create_vhost(self, vhost: str, *, default_queue_type: str) -> None:
        """A new vhost whose queues are `default_queue_type` unless declared otherwise.

        RabbitMQ 3.10 sets a vhost's default queue type only when it is created.
        """
        body = {"defaultqueuetype": default_queue_type}
        self._expect(self.request("put", f"vhosts/{_q(vhost)}", json=body), f"create {vhost}")
        # The user who made it may use it (as `rabbitmqctl add_vhost` leaves to an admin).
        user = self._bases[0][1][0]
        rights = {"configure": ".*", "write": ".*", "read": ".*"}
        self._expect(
            self.request("put", f"permissions/{_q(vhost)}/{_q(user)}", json=rights),
            f"grant {user} {vhost}",
        )

    def grant_app_user(self, vhost: str, user: str, password: str, pattern: str) -> None:
        """`user` with `password`, no tags (no management API, no UI), and configure,
        write and read rights on `vhost` limited to `pattern`; created or updated."""
        body = {"password": password, "tags": ""}
        self._expect(self.request("put", f"users/{_q(user)}", json=body), f"set user {user}")
        rights = dict.fromkeys(("configure", "write", "read"), pattern)
        self._expect(
            self.request("put", f"permissions/{_q(vhost)}/{_q(user)}", json=rights),
            f"grant {user} {vhost}",
        )

    def set_policy(self, vhost: str, name: str, body: dict[str, Any]) -> None:
        self._expect(
            self.request("put", f"policies/{_q(vhost)}/{_q(name)}", json=body),
            f"set policy {name}",
        )

    def policies(self, vhost: str) -> dict[str, dict[str, Any]]:
        return {policy["name"]: policy for policy in self.get_json(f"policies/{_q(vhost)}")}

    @staticmethod
    def _expect(answer: requests.Response, what: str) -> None:
        if answer.status_code not in (200, 201, 204):
            detail = answer.text[:200].strip()
            raise BrokerError(f"RabbitMQ management API: {what}: {answer.status_code} {detail}")


def _q(segment: str) -> str:
    return quote(segment, safe="")
