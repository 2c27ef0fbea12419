"""The sandbox upstream: one local HTTP server impersonating PokeAPI, a CMS and Semaphore.

It is a real server on a real socket, so clients under test exercise their actual
connection pooling, timeouts and error handling. Each connection gets its own daemon
thread: a hanging or dripping response never delays the others, and a stuck client can
never keep the process alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import socketserver
import struct
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sandbox import admin
from sandbox.budget import UpstreamBudget
from sandbox.faults import UNSET, Fault, FaultBook, Unset, endless_page
from sandbox.messages import JSON_TYPE, Request, Response, text_response
from sandbox.request_log import Received, RequestLog
from sandbox.routes import UNKNOWN_ROUTE, Route, Upstreams, not_found, route_names
from upstreams import offline_settings

SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - a fixed fake for local tests
_STATUS_PHRASES = {
    int(status): phrase for status, (phrase, _) in BaseHTTPRequestHandler.responses.items()
}


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, records it, applies any fault, and writes the response."""

    protocol_version = "HTTP/1.1"  # keep-alive, as every real client expects
    server_version = "sandbox-upstream"
    sys_version = ""
    disable_nagle_algorithm = True  # small header writes must not wait for ACKs
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a line per request on stderr would dominate benchmark time."""

    def do_GET(self) -> None:
        arrived = time.monotonic()
        try:
            request = self._read_request()
        except ValueError as error:
            self.close_connection = True
            self._send(text_response(400, f"Bad Request: {error}"), head_only=False)
            return
        try:
            self._serve(request, arrived)
        except (ConnectionError, TimeoutError):
            # The client went away (often on purpose, after a fault); drop the connection.
            self.close_connection = True

    # Every method goes through one path: routes answer 405 themselves, admin takes writes.
    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET  # noqa: N815

    def _read_request(self) -> Request:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ValueError("chunked request bodies are not supported")
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        return Request(
            method=self.command,
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )

    def _serve(self, request: Request, arrived: float) -> None:
        server = self.server
        head_only = request.method == "HEAD"
        if admin.is_admin_path(request.path):
            self._send(admin.handle(server.sandbox, request), head_only=head_only)
            return
        route = server.upstreams.resolve(request.path)
        name = route.name if route else UNKNOWN_ROUTE
        conditional = "if-none-match" in request.headers or "if-modified-since" in request.headers
        server.log.record(name, arrived, request.path, request.headers, conditional=conditional)
        if route is None:
            self._send(not_found(), head_only=head_only)
            return
        refused = server.sandbox.budget_of(route.name).admit()
        if refused is not None:
            self._send(refused, head_only=head_only)
            return
        latency = server.sandbox.latency
        if latency > 0:
            server.stopping.wait(latency)
        fault = server.faults.take(route.name)
        if fault is None:
            self._reply(route, request, head_only=head_only)
        else:
            self._misbehave(fault, route, request, head_only=head_only)

    def _misbehave(self, fault: Fault, route: Route, request: Request, *, head_only: bool) -> None:
        canned = fault.canned_response()
        if canned is not None:
            self._send(canned, head_only=head_only)
            return
        stopping = self.server.stopping
        if fault.kind == "latency":
            stopping.wait(fault.seconds)
            self._reply(route, request, head_only=head_only)
        elif fault.kind == "hang":
            self.close_connection = True
            stopping.wait(fault.seconds)
        elif fault.kind == "reset":
            self._reset()
        elif fault.kind == "truncated":
            self.close_connection = True
            response = route.respond(request)
            half = response.body[: len(response.body) // 2]
            self.wfile.write(self._head(response, len(response.body)) + half)
        elif fault.kind == "huge":
            self.wfile.write(self._head(Response(200, b"", JSON_TYPE), fault.size))
            if not head_only:
                for chunk in fault.huge_body():
                    self.wfile.write(chunk)
        elif fault.kind == "slow_drip":
            self.close_connection = True
            if fault.encodings:  # dripped under a stack of encodings (`gzip, gzip`)
                plain = dataclasses.replace(
                    request, headers={**request.headers, "accept-encoding": ""}
                )
                response = fault.encoded(route.respond(plain))
            else:
                response = route.respond(request)
            self.wfile.write(self._head(response, len(response.body)))
            for index in range(len(response.body)):
                if stopping.wait(fault.interval):
                    return
                self.wfile.write(response.body[index : index + 1])
        elif fault.kind in ("slow_headers", "slow_chunks", "trailer_flood", "deflate_padding"):
            self._misbehave_on_the_wire(fault, route, request)
        elif fault.kind == "encoding":
            plain = dataclasses.replace(request, headers={**request.headers, "accept-encoding": ""})
            self._send(fault.encoded(route.respond(plain), fault.status), head_only=head_only)
        elif fault.kind == "next_link":
            plain = dataclasses.replace(request, headers={**request.headers, "accept-encoding": ""})
            self._send(fault.with_next_link(route.respond(plain)), head_only=head_only)
        elif fault.kind == "endless_paging":
            page = endless_page(route.name, request, self.server.sandbox.base_url)
            self._send(page, head_only=head_only)
        else:  # pragma: no cover - Fault.build rejects unknown kinds
            raise AssertionError(f"unhandled fault kind {fault.kind}")

    def _misbehave_on_the_wire(self, fault: Fault, route: Route, request: Request) -> None:
        """The faults that are a way of sending: slow heads and framing, endless streams.
        Each ends when the client hangs up, the server stops, or its bound is reached."""
        stopping = self.server.stopping
        self.close_connection = True
        if fault.kind == "slow_headers":
            response = route.respond(request)
            head = self._head(response, len(response.body))
            for index in range(len(head)):
                if stopping.wait(fault.interval):
                    return
                self.wfile.write(head[index : index + 1])
            self.wfile.write(response.body)
            return
        if fault.kind == "deflate_padding":
            head = self._head(Response(200, b"", JSON_TYPE, (("Content-Encoding", "deflate"),)), 0)
            # Close-delimited: no Content-Length, the stream ends when the socket does.
            self.wfile.write(head.replace(b"Content-Length: 0\r\n", b""))
            for chunk in fault.deflate_padding():
                if stopping.is_set():
                    return
                self.wfile.write(chunk)
            return
        chunked = Response(200, b"", JSON_TYPE, (("Transfer-Encoding", "chunked"),))
        self.wfile.write(self._head(chunked, 0).replace(b"Content-Length: 0\r\n", b""))
        if fault.kind == "slow_chunks":
            # A chunk-size line of leading zeros, one byte per interval, never ended.
            while not stopping.wait(fault.interval):
                self.wfile.write(b"0")
            return
        # trailer_flood: a small body, the last chunk, then trailer lines without end.
        self.wfile.write(b"2\r\n{}\r\n0\r\n")
        batch = b"X-Trailer: flood\r\n" * 4096
        until = time.monotonic() + fault.seconds
        while time.monotonic() < until and not stopping.is_set():
            self.wfile.write(batch)

    def _reply(self, route: Route, request: Request, *, head_only: bool) -> None:
        """The route's normal answer, counted (status, body bytes) in the request log."""
        response = route.respond(request)
        self.server.log.answered(
            route.name, response.status, 0 if head_only else len(response.body)
        )
        self._send(response, head_only=head_only)

    def _reset(self) -> None:
        """Abort with a TCP RST: zero linger makes close() discard the connection."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The real close happens when the handler drops its file objects, before the
        # server would send a FIN; the server's later shutdown() then fails harmlessly.
        self.connection.close()

    def _send(self, response: Response, *, head_only: bool) -> None:
        head = self._head(response, len(response.body))
        self.wfile.write(head if head_only or not response.body else head + response.body)

    def _head(self, response: Response, content_length: int) -> bytes:
        status = response.status
        lines = [
            f"HTTP/1.1 {status} {_STATUS_PHRASES.get(status, '')}",
            f"Server: {self.server_version}",
            f"Date: {formatdate(usegmt=True)}",
        ]
        if response.content_type is not None:
            lines.append(f"Content-Type: {response.content_type}")
        if status != 304:
            lines.append(f"Content-Length: {content_length}")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _HTTPServer(ThreadingHTTPServer):
    """A threading server that can be stopped while connections are still open."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for hung or idle keep-alive connections
    request_queue_size = 128  # benchmarks open many connections at once
    upstreams: Upstreams

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        self.faults = sandbox._faults
        self.log = sandbox._log
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every handler still reading from a client so its thread can end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # Clients dropping connections is routine here (timeouts, injected faults).
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        if self.stopping.is_set():
            return
        super().handle_error(request, client_address)


def _url_host(host: str) -> str:
    """The host to put in absolute URLs: a wildcard bind is reached over loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return host


class SandboxServer:
    """A local stand-in for the three upstream APIs, with fault injection.

    Start it, point the clients at `pokeapi_url`, `cms_url` and `semaphore_url`, and use
    `inject()` to make a route misbehave. Every request is counted (faulted ones too),
    so tests can check how many attempts a client made.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        semaphore_token: str = SANDBOX_TOKEN,
        latency: float = 0.0,
        seed: int | None = None,
        public_url: str | None = None,
        prewarm: bool = False,
        small_bodies: bool = False,
        budget: float = 0.0,
    ) -> None:
        self.host = host
        # The address clients use in links (pagination, record URLs), when it is not the
        # bound one: e.g. http://sandbox:8000 inside a compose network.
        self.public_url = public_url.rstrip("/") if public_url else None
        self.prewarm = prewarm
        # PokeAPI records cut to ~4 KB (benchmarks of the per-message cost).
        self.small_bodies = small_bodies
        self.port = port
        self.latency = latency
        self._semaphore_token = semaphore_token
        self._faults = FaultBook(seed)
        # Each upstream's own rate limit (`set_budget`); `budget` applies to every route.
        self._default_budget = budget
        self._budgets: dict[str, UpstreamBudget] = {}
        self._budgets_lock = threading.Lock()
        self._log = RequestLog()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._lifecycle = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> SandboxServer:
        """Bind and serve from a daemon thread; the port is known when this returns."""
        with self._lifecycle:
            if self._httpd is not None:
                raise RuntimeError("the sandbox server is already running")
            httpd = _HTTPServer((self.host, self.port), self)
            self.port = int(httpd.server_address[1])
            self._base_url = self.public_url or f"http://{_url_host(self.host)}:{self.port}"
            httpd.upstreams = Upstreams(
                self._base_url,
                self._semaphore_token,
                prewarm=self.prewarm,
                small_bodies=self.small_bodies,
            )
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"sandbox-upstream-{self.port}",
                daemon=True,
            )
            thread.start()
            self._httpd, self._thread = httpd, thread
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; hung faults end at once."""
        with self._lifecycle:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None or thread is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the sandbox server has not been started")
        return self._base_url

    @property
    def pokeapi_url(self) -> str:
        return self.base_url + "/api/v2"

    @property
    def cms_url(self) -> str:
        return self.base_url + "/api/v1"

    @property
    def semaphore_url(self) -> str:
        return self.base_url + "/api/v1alpha"

    def upstream_settings(self) -> dict[str, str]:
        """The variables that point every upstream it serves at it (their registry
        entries' `sandbox_path`), with the token it accepts."""
        return offline_settings(self.base_url, self._semaphore_token)

    @property
    def semaphore_token(self) -> str:
        return self._semaphore_token

    @semaphore_token.setter
    def semaphore_token(self, token: str) -> None:
        self._semaphore_token = token
        if self._httpd is not None:
            self._httpd.upstreams.semaphore.token = token

    # -- the upstreams' own rate limits -----------------------------------------------

    def budget_of(self, route: str) -> UpstreamBudget:
        """The rate limit `route` enforces (by default none, or `budget` per second)."""
        budget = self._budgets.get(route)
        if budget is None:
            with self._budgets_lock:
                budget = self._budgets.setdefault(route, UpstreamBudget(self._default_budget))
        return budget

    def set_budget(self, route: str, rate: float, *, retry_after: int | None = None) -> None:
        """Make `route` answer 429 (with `Retry-After`) above `rate` requests/s; 0: none.

        Takes effect at once, so a test can halve an upstream's budget mid-run."""
        if route not in route_names():
            known = ", ".join(route_names())
            raise ValueError(f"unknown route {route!r}; expected one of {known}")
        if rate < 0:
            raise ValueError("rate must not be negative")
        budget = self.budget_of(route)
        budget.set_rate(rate)
        if retry_after is not None:
            budget.retry_after = retry_after

    def budget_counts(self) -> dict[str, dict[str, float]]:
        """Per route with a limit: its rate, requests allowed and requests refused (429)."""
        with self._budgets_lock:
            budgets = dict(self._budgets)
        return {route: b.counts() for route, b in budgets.items() if b.rate or b.refused}

    # -- faults and the request log -------------------------------------------------

    def inject(
        self,
        route: str,
        kind: str,
        *,
        times: int | Unset | None = UNSET,
        probability: float | None = None,
        **params: Any,
    ) -> None:
        """Make `route` misbehave as `kind` for its next `times` requests.

        `times` defaults to 1; None means until cleared. With `probability`, each request
        is faulted at random with that chance, and `times` (default: no limit) caps how
        many are. Faults queued on one route are consumed in order. Raises ValueError for
        an unknown route, kind or parameter.
        """
        if route not in route_names():
            known = ", ".join(route_names())
            raise ValueError(f"unknown route {route!r}; expected one of {known}")
        self._faults.add(route, Fault.build(kind, params), times=times, probability=probability)

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_faults(self) -> dict[str, list[str]]:
        """Fault kinds still queued, per route."""
        return self._faults.pending()

    def reset(self) -> None:
        """Clear faults, rate limits and the request log, undo record changes (latency
        is kept)."""
        self._faults.clear()
        with self._budgets_lock:
            self._budgets.clear()
        self._log.clear()
        if self._httpd is not None:
            self._httpd.upstreams.pokeapi.restore()
            self._httpd.upstreams.cms.restore()

    def calls(self, route: str | None = None) -> int:
        """Requests received for `route` (all routes when None), faulted ones included."""
        return self._log.calls(route)

    def call_times(self, route: str) -> list[float]:
        """`time.monotonic()` at the arrival of each request to `route`."""
        return self._log.call_times(route)

    def call_counts(self) -> dict[str, int]:
        """Requests per route, for the routes that received any."""
        return self._log.counts()

    def calls_by_path(self, route: str) -> dict[str, int]:
        """Requests per path to `route` (e.g. per Pokémon), faulted ones included."""
        return self._log.path_counts(route)

    def received(self, route: str | None = None) -> list[Received]:
        """The latest requests (to `route`) with the headers the server read, oldest first."""
        return self._log.received(route)

    def conditional_calls(self) -> dict[str, int]:
        """Requests per route that carried If-None-Match or If-Modified-Since."""
        return self._log.conditional()

    def not_modified(self, route: str | None = None) -> int:
        """304 answers sent for `route` (all routes when None)."""
        counts = self._log.not_modified()
        return sum(counts.values()) if route is None else counts.get(route, 0)

    def not_modified_counts(self) -> dict[str, int]:
        """304 answers per route, for the routes that sent any."""
        return self._log.not_modified()

    def bytes_sent_counts(self) -> dict[str, int]:
        """Body bytes of normal answers per route."""
        return self._log.bytes_sent()

    def bytes_sent(self, route: str | None = None) -> int:
        """Body bytes of normal answers for `route` (all when None), as sent (gzipped)."""
        counts = self._log.bytes_sent()
        return sum(counts.values()) if route is None else counts.get(route, 0)

    # -- records -------------------------------------------------------------------

    def change_record(self, route: str, key: str) -> dict[str, object]:
        """Edit one record as the upstream would, so its ETag and Last-Modified change.

        `route` is `pokemon` (its weight grows by one per revision) or `article` (a
        revised title and `updated_at`). Raises ValueError for another route, KeyError
        for an unknown record.
        """
        if self._httpd is None:
            raise RuntimeError("the sandbox server has not been started")
        upstreams = self._httpd.upstreams
        if route == "pokemon":
            changed = upstreams.pokeapi.change(key)
        elif route == "article":
            changed = upstreams.cms.change(key)
        else:
            raise ValueError(f"records of {route!r} cannot be changed (pokemon, article)")
        if changed is None:
            raise KeyError(f"no {route} {key!r}")
        return changed
