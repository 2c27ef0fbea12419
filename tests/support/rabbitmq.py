"""A private RabbitMQ node for the suite, and disposable vhosts on it.

The machine's own RabbitMQ (the service on 5672, node `rabbit@<host>`) belongs to
whoever installed it: the suite never creates vhosts, users or plugins there, and never
depends on its management plugin. Each pytest process starts a node of its own instead,
as it starts its own redis-server (tests/support/redis_server.py):

- its own Erlang node name (`apiworker-test-<random>@localhost`), so epmd (the shared
  name registry on 4369) tells it apart from the machine's node and from the other
  xdist workers' nodes;
- its own AMQP, management and distribution ports, all on loopback and free when chosen;
- its own configuration, data, logs, enabled-plugins file and HOME (hence its own
  `.erlang.cookie`) in a temporary directory, so nothing under /etc/rabbitmq or
  /var/lib/rabbitmq is read or written; `rabbitmqctl` calls for it pass `-n` and the
  same environment;
- the management plugin enabled on that node alone: `apiworker queues` reads its API
  (RABBITMQ_MANAGEMENT_URL), and the suite makes its vhosts through it (an HTTP call,
  where each `rabbitmqctl` call boots an Erlang VM of its own).

`RabbitNode` is one such node. Several share a cookie (`cookie=`) and can see each other,
which is what `rabbitmqctl join_cluster` needs for a cluster of them. `RabbitServer` is
what the tests use: a server to make vhosts on and count queues in, either a private node
or a disposable server named by TEST_AMQP_URL (managed through TEST_AMQP_MANAGEMENT_URL).

Why not pytest-rabbitmq (5.0): its process fixture also runs `rabbitmq-server` with its
own node name, ports and mnesia directory, and it copes with xdist (port files), but it
sets no configuration file, so the node reads the machine's /etc/rabbitmq/rabbitmq.conf
(here that binds 127.0.0.1:5672, the machine's own port) and would enable the management
plugin on its default port 15672 in every process at once; it shares the user's HOME
cookie; it offers no vhosts (its client fixture empties `/` between tests) and no crash
(SIGKILL) of the node. Wrapping it would have meant overriding most of what it does, and
it brings mirakuru and port-for with it.

Why not pytest-redis (5.0) for the Redis half either: the suite needs redis-server
started with the compose file's arguments, TLS and ACL options, append-only files, a
SIGKILL and restart on the same data, and one server per module as well as per session;
pytest-redis's executor covers the plain case, so tests/support/redis_server.py (about
a hundred lines) stays.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests

from brokers.amqp import APP_PERMISSION_PATTERN, apply_policies
from brokers.rabbitmq_api import ManagementApi
from ops.processes.children import popen
from tests.support.redis_server import free_port

RABBITMQCTL_TIMEOUT = 60
#: A first boot (new schema) takes about 4-5 s here; three xdist workers boot at once.
START_TIMEOUT = 90.0
#: A clean stop (what `rabbitmqctl shutdown` does) takes about 6 s; SIGKILL after this.
STOP_TIMEOUT = 20.0
#: Where Debian's package keeps the real scripts (its /usr/sbin ones are a wrapper that
#: switches to the `rabbitmq` user, dropping the node's environment), then the PATH.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/sbin", "/usr/local/sbin")
#: How often the management API refreshes queue figures (default 5 s): the CLI reads
#: them from its API, and tests poll them.
STATISTICS_INTERVAL_MS = 500
#: The production default of BROKER_DELIVERY_LIMIT on RabbitMQ, set by each vhost's
#: policies.
DELIVERY_LIMIT = 20


class RabbitUnavailable(RuntimeError):
    """No RabbitMQ can be started or reached where the suite looks for one."""


def rabbit_script(name: str) -> str:
    """The path of RabbitMQ's `name` script that runs as the calling user, or raise."""
    search = os.pathsep.join([*SCRIPT_DIRS, os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise RabbitUnavailable(
            f"{name} is not installed: install rabbitmq-server (make test does, as root) "
            "or set TEST_AMQP_URL to a disposable RabbitMQ"
        )
    resolved = Path(found).resolve()
    if resolved.name == "rabbitmq-script-wrapper":  # Debian's: the real one sits beside it
        return str(resolved.parent / name)
    return found


class RabbitNode:
    """One `rabbitmq-server` node on loopback with its own name, ports, files and cookie."""

    def __init__(
        self,
        *,
        name: str | None = None,
        cookie: str | None = None,
        base_dir: Path | None = None,
        management: bool = True,
        config: Sequence[str] = (),
        advanced: str = "[].",
    ) -> None:
        """`config`: more lines of its rabbitmq.conf; `advanced`: its advanced.config
        (Erlang terms, for what rabbitmq.conf cannot set)."""
        self.server_script = rabbit_script("rabbitmq-server")
        self.ctl_script = rabbit_script("rabbitmqctl")
        self.name = name or f"apiworker-test-{uuid.uuid4().hex[:8]}@localhost"
        self.cookie = cookie or secrets.token_hex(16)
        self.dir = base_dir or Path(tempfile.mkdtemp(prefix="apiworker-rabbit-"))
        self.management = management
        self.config, self.advanced = tuple(config), advanced
        self.amqp_port = self.management_port = self.dist_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._choose_ports()
        self._write_files()

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The AMQP URL of the node's default vhost (guest may log in over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.name}.log"

    @property
    def env(self) -> dict[str, str]:
        """The environment of the node and of every CLI call for it.

        Nothing RabbitMQ reads is left to its defaults: those point at /etc/rabbitmq and
        /var/lib/rabbitmq, the machine's own node's files.
        """
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        etc = self.dir / "etc"
        return {
            **inherited,
            "HOME": str(self.dir / "home"),  # .erlang.cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(etc / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(etc / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(etc / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            # Distribution (clustering, CLI) on loopback only, as the AMQP listener.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",  # only if this node has to start epmd itself
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> RabbitNode:
        """Start the node and wait until AMQP and the management API answer.

        The data directory is kept across stops, kills and starts: a restarted node has
        the vhosts, users and durable queues it had. A port taken by someone else in the
        meantime (the ports are only free when chosen) costs one new choice of ports.
        """
        for attempt in range(3):
            self.launch()
            try:
                self.wait_ready(timeout)
                return self
            except RuntimeError:
                if attempt == 2 or "eaddrinuse" not in self._output():
                    raise
                self.kill()
                self._choose_ports()
                self._write_files()
        raise AssertionError("unreachable")

    def launch(self) -> None:
        """Start `rabbitmq-server` without waiting for it (several nodes boot at once).

        From the main thread: the node gets SIGTERM when the thread that started it ends
        (Linux's parent-death signal follows the thread)."""
        with (self.dir / "stdout.log").open("ab") as log:
            # Its own session, and the harness's parent-death signal (ops/processes/).
            self.process = popen(
                [self.server_script], cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server {self.name} exited ({self.process.returncode}): "
                    f"{self._output()[-2000:]}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ node {self.name} did not start in {timeout}s")
            time.sleep(0.1)

    def _answers(self) -> bool:
        # The AMQP listener opens last in RabbitMQ's boot, after the plugins started.
        try:
            socket.create_connection(("127.0.0.1", self.amqp_port), timeout=1).close()
            if self.management:
                answer = requests.get(
                    f"http://127.0.0.1:{self.management_port}/api/overview",
                    auth=("guest", "guest"),
                    timeout=2,
                )
                return answer.status_code == 200
        except (OSError, requests.RequestException):
            return False
        return True

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """A clean shutdown: SIGTERM to rabbitmq-server, which stops the node as
        `rabbitmqctl shutdown` does (without booting a CLI VM); SIGKILL after `timeout`."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the node's whole process group: it vanishes as in a crash."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def cleanup(self) -> None:
        """Kill the node and delete its files. No clean stop: its data is thrown away,
        and a clean stop costs about 6 s of every test run."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- tools -------------------------------------------------------------------------

    def rabbitmqctl(self, *args: str, timeout: float = RABBITMQCTL_TIMEOUT) -> str:
        """`rabbitmqctl -n <this node> ...` with the node's cookie; its output, or raise."""
        done = subprocess.run(
            [self.ctl_script, "-n", self.name, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.name} {' '.join(args)} failed: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    # -- files -------------------------------------------------------------------------

    def _choose_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.amqp_port, self.management_port, self.dist_port = sorted(ports)

    def _write_files(self) -> None:
        etc, home = self.dir / "etc", self.dir / "home"
        etc.mkdir(parents=True, exist_ok=True)
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie others may read
        (etc / "rabbitmq-env.conf").write_text("")  # not the machine's /etc one
        (etc / "advanced.config").write_text(self.advanced + "\n")
        lines = [f"collect_statistics_interval = {STATISTICS_INTERVAL_MS}", *self.config]
        plugins = []
        if self.management:
            plugins.append("rabbitmq_management")
            lines += [
                "management.tcp.ip = 127.0.0.1",
                f"management.tcp.port = {self.management_port}",
            ]
        (etc / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (etc / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")

    def _output(self) -> str:
        texts = []
        for path in (self.dir / "stdout.log", self.log_file):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)


@dataclass(frozen=True)
class RabbitServer:
    """A RabbitMQ server the suite may create vhosts on: a private node, or a disposable
    server named by TEST_AMQP_URL. Vhosts are made through the management API."""

    url: str  # without a vhost path
    management_url: str
    node: RabbitNode | None = None  # None: a server the suite did not start

    @classmethod
    def of_node(cls, node: RabbitNode) -> RabbitServer:
        return cls(node.url.rstrip("/"), node.management_url, node)

    @classmethod
    def from_url(cls, given: str) -> RabbitServer:
        """The server at TEST_AMQP_URL, managed at TEST_AMQP_MANAGEMENT_URL (default: the
        same host, port 15672)."""
        parts = urlsplit(given)
        if parts.path not in ("", "/"):
            raise RuntimeError("TEST_AMQP_URL names a server, not a vhost: drop its path")
        host, port = parts.hostname or "127.0.0.1", parts.port or 5672
        if (host, port) in (("127.0.0.1", 5672), ("localhost", 5672)):
            raise RuntimeError("TEST_AMQP_URL must not be the machine's RabbitMQ on port 5672")
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            raise RabbitUnavailable(f"no RabbitMQ at {host}:{port} ({exc})") from exc
        credentials = f"{parts.username or 'guest'}:{parts.password or 'guest'}"
        management = os.environ.get("TEST_AMQP_MANAGEMENT_URL") or urlunsplit(
            ("http", f"{credentials}@{host}:15672", "", "", "")
        )
        return cls(given.rstrip("/"), management)

    @property
    def user(self) -> str:
        return urlsplit(self.url).username or "guest"

    def create_vhost(self, *, delivery_limit: int = DELIVERY_LIMIT, limited: bool = True) -> str:
        """A new, empty vhost, set up as an operator sets one up (`apiworker rabbitmq
        apply-policy` as the management user: default queue type quorum, the queues'
        policies); returns its AMQP URL.

        The URL's user is, unless `limited=False`, an application user of that vhost
        alone, as README's least-privilege set-up makes it: no tags, and configure,
        write and read rights only on the service's own queues and exchanges
        (`APP_PERMISSION_PATTERN`). So every test of the worker, the producer and the
        CLI over AMQP runs under those rights; the suite's own user (the management
        user here) sets up and inspects."""
        name = f"apiworker-test-{uuid.uuid4().hex[:10]}"
        apply_policies(ManagementApi(self.management_url), name, delivery_limit)
        self._management(
            "put",
            f"permissions/{quote(name, safe='')}/{quote(self.user, safe='')}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        if not limited:
            return f"{self.url}/{quote(name, safe='')}"
        user, password = app_user(name), secrets.token_hex(12)
        self._management("put", f"users/{quote(user, safe='')}",
                         json={"password": password, "tags": ""})  # fmt: skip
        self._management(
            "put",
            f"permissions/{quote(name, safe='')}/{quote(user, safe='')}",
            json=dict.fromkeys(("configure", "write", "read"), APP_PERMISSION_PATTERN),
        )
        parts = urlsplit(self.url)
        netloc = f"{quote(user, safe='')}:{password}@{parts.hostname}:{parts.port or 5672}"
        return f"{parts.scheme}://{netloc}/{quote(name, safe='')}"

    def delete_vhost(self, vhost_url: str) -> None:
        name = vhost_of(vhost_url)
        assert name != "/", "never the default vhost"
        self._management("delete", f"vhosts/{quote(name, safe='')}")
        answer = requests.delete(
            self._api(f"users/{quote(app_user(name), safe='')}"), auth=self._auth, timeout=30
        )
        assert answer.status_code in (204, 404), answer.text

    def queue_counts(self, vhost_url: str) -> dict[str, tuple[int, int]]:
        """Each queue's (ready, unacknowledged) messages, as the server counts them now.

        On a private node the node itself answers (`rabbitmqctl list_queues`): the
        management API's figures are samples, up to a statistics interval old, and a
        test that waits for "drained" must not end on a stale zero.
        """
        name = vhost_of(vhost_url)
        if self.node is not None:
            output = self.node.rabbitmqctl(
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

    def vhosts(self) -> set[str]:
        return {vhost["name"] for vhost in self._management("get", "vhosts").json()}

    @property
    def _auth(self) -> tuple[str, str]:
        parts = urlsplit(self.management_url)
        return (unquote(parts.username or "guest"), unquote(parts.password or ""))

    def _api(self, path: str) -> str:
        parts = urlsplit(self.management_url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api/{path}"

    def _management(self, method: str, path: str, **kwargs: object) -> requests.Response:
        answer = requests.request(
            method, self._api(path), auth=self._auth,
            timeout=30, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        answer.raise_for_status()
        return answer


def app_user(vhost: str) -> str:
    """The limited application user of a vhost the suite made."""
    return f"{vhost}-app"


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return "/" if path in ("", "/") else unquote(path[1:])
