"""The HTTP plumbing every upstream client shares.

One `requests.Session` per upstream per process (created lazily, re-created after a
fork, so it is safe under Celery's prefork and threads pools), a connect and read
timeout on every call plus a total deadline for the body, a bounded response size, no
redirects, the one retry policy, and the one place where `requests` failures and error
statuses become `apis.errors` exceptions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3 import exceptions as urllib3_errors

from apis import errors, metrics
from apis.breaker import CircuitBreaker
from apis.config import ApiSettings, UpstreamConfig
from apis.ratelimit import RateLimiter
from apis.redact import excerpt, redact, register_secret
from apis.retry import Sleep, build_retrying

log = logging.getLogger("apis")

Decoder = Callable[[bytes], Any]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHUNK = 64 * 1024
_ERROR_BODY_LIMIT = 2048


@dataclass(frozen=True)
class Payload:
    """A decoded upstream body with the validators the results contract stores."""

    data: Any
    etag: str | None = None
    last_modified: str | None = None
    links: Mapping[str, str] = field(default_factory=dict)


class ApiClient:
    """Base class of one upstream's client; subclasses add the resource methods."""

    service: ClassVar[str] = "upstream"
    requires_token: ClassVar[bool] = False

    def __init__(self, config: UpstreamConfig, *, sleep: Sleep = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._session: requests.Session | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.breaker = CircuitBreaker(config)
        self.rate_limiter = RateLimiter(config, sleep=sleep)
        if config.token is not None:
            register_secret(config.token.get_secret_value())

    @classmethod
    def configure(cls, settings: ApiSettings) -> UpstreamConfig:
        """This upstream's entry of configuration; every subclass defines it."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> ApiClient:
        return cls(cls.configure(settings))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.config.base_url!r})"

    # -- session ------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        """This process's session; a forked child builds its own (sockets don't fork)."""
        pid = os.getpid()
        if self._session is None or self._pid != pid:
            with self._lock:
                if self._session is None or self._pid != pid:
                    self._session = self._new_session()
                    self._pid = pid
        return self._session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # Ignore proxy variables and ~/.netrc: credentials come only from our settings.
        session.trust_env = False
        # The pool keeps HTTP_POOL_SIZE connections; a burst above it (a catalog batch)
        # opens extra ones that are closed after use. Never pool_block: a thread waiting
        # for a connection has no timeout in requests, and the threads pool has no time
        # limits to end it.
        adapter = HTTPAdapter(
            pool_connections=1,
            pool_maxsize=self.config.pool_size,
            max_retries=0,
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(
            {
                "User-Agent": self.config.user_agent,
                "Accept": "application/json",
                "Accept-Encoding": "gzip, deflate",
            }
        )
        return session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- requests -----------------------------------------------------------------

    def fetch(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        decode: Decoder = orjson.loads,
    ) -> Payload:
        return self.request("GET", path, params=params, decode=decode)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        decode: Decoder = orjson.loads,
    ) -> Payload:
        """Send one logical request: retried when idempotent, mapped errors, logged once.

        `path_or_url` is a path below the base URL, or an absolute URL on the same
        origin (a pagination link); any other host is refused. `decode` turns the body
        into data and raises ValueError on malformed input; a client may pass a typed
        decoder that reads only the fields it needs.
        """
        method = method.upper()
        url = self._url(method, path_or_url)
        headers = self._auth_headers(method, url)
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        # An open circuit refuses the call before anything is sent (raises CircuitOpen).
        permit = self.breaker.before_call(method, urlsplit(url).path)
        try:
            if not idempotent:
                payload = self._send(method, url, params, json, headers, decode)
            else:
                failed: list[errors.UpstreamError] = []

                def attempt() -> Payload:
                    try:
                        return self._send(method, url, params, json, headers, decode)
                    except errors.UpstreamError as exc:
                        failed.append(exc)
                        raise

                retrying = build_retrying(
                    self.config.retry, service=self.service, sleep=self._sleep
                )
                try:
                    payload = retrying(attempt)
                except errors.Throttled:
                    sent = [exc for exc in failed if not isinstance(exc, errors.HeldBack)]
                    if sent:
                        # The call did reach the upstream and fail: report that, so the
                        # job's retry budget pays for it rather than a free deferral.
                        raise sent[-1] from None
                    raise
        except errors.UpstreamError as exc:
            self.breaker.after_call(permit, exc)
            self._log_failure(exc)
            raise
        except BaseException as exc:
            self.breaker.after_call(permit, exc)
            raise
        self.breaker.after_call(permit, None)
        return payload

    def _url(self, method: str, path_or_url: str) -> str:
        base = self.config.base_url
        if base is None:
            raise errors.NotConfigured(
                f"{self.service} is not configured: set {self.config.base_url_setting}",
                self.service,
                method,
            )
        if "://" not in path_or_url:
            return base + path_or_url
        link, origin = urlsplit(path_or_url), urlsplit(base)
        if (link.scheme, link.netloc) != (origin.scheme, origin.netloc):
            raise errors.InvalidResponse(
                f"refusing to follow a link to another host: {link.netloc}",
                self.service,
                method,
                link.path,
            )
        return path_or_url

    def _auth_headers(self, method: str, url: str) -> dict[str, str]:
        token = self.config.token
        if token is None:
            if self.requires_token:
                raise errors.NotConfigured(
                    f"{self.service} needs a token: set {self.config.token_setting}",
                    self.service,
                    method,
                    urlsplit(url).path,
                )
            return {}
        return {"Authorization": f"{self.config.token_scheme} {token.get_secret_value()}"}

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str | int] | None,
        json: Any,
        headers: dict[str, str],
        decode: Decoder,
    ) -> Payload:
        """One attempt: one HTTP request, its whole body read, decoded or mapped to an error."""
        path = urlsplit(url).path
        # Every attempt reaches the upstream, so every attempt takes a token (or raises
        # Throttled, which is not retried in place).
        self.rate_limiter.acquire(method, path)
        started = time.monotonic()
        outcome = "error"
        try:
            with self._mapped_transport_errors(method, path):
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers=headers,
                    timeout=(self.config.connect_timeout, self.config.read_timeout),
                    allow_redirects=False,
                    stream=True,
                )
                with response:
                    outcome = str(response.status_code)
                    if response.status_code >= 300:
                        body = self._read(response, method, path, started, _ERROR_BODY_LIMIT)
                        raise self._status_error(response, body, method, path)
                    body = self._read(
                        response, method, path, started, self.config.max_response_bytes
                    )
                    return self._decode(response, body, method, path, decode)
        except errors.TransportError as exc:
            outcome = "timeout" if isinstance(exc, errors.UpstreamTimeout) else "connection"
            raise
        finally:
            metrics.UPSTREAM_REQUESTS.labels(self.service, method, outcome).inc()
            metrics.UPSTREAM_LATENCY.labels(self.service).observe(time.monotonic() - started)

    @contextmanager
    def _mapped_transport_errors(self, method: str, path: str) -> Iterator[None]:
        """Translate `requests` exceptions into the error model, in one place."""
        try:
            yield
        except requests.Timeout as exc:
            raise errors.UpstreamTimeout(
                f"timed out: {type(exc).__name__}", self.service, method, path
            ) from exc
        except requests.exceptions.ContentDecodingError as exc:
            raise errors.InvalidResponse(
                "body could not be decompressed", self.service, method, path
            ) from exc
        except requests.ConnectionError as exc:
            cause = exc.args[0] if exc.args else None
            if isinstance(cause, urllib3_errors.ReadTimeoutError):
                raise errors.UpstreamTimeout(
                    "timed out reading the body", self.service, method, path
                ) from exc
            raise errors.UpstreamConnectionError(
                f"connection failed: {type(exc).__name__}", self.service, method, path
            ) from exc
        except requests.RequestException as exc:
            raise errors.UpstreamConnectionError(
                f"request failed: {type(exc).__name__}", self.service, method, path
            ) from exc
        # Reading the body goes to urllib3 directly (see _read).
        except urllib3_errors.ReadTimeoutError as exc:
            raise errors.UpstreamTimeout(
                "timed out reading the body", self.service, method, path
            ) from exc
        except urllib3_errors.DecodeError as exc:
            raise errors.InvalidResponse(
                "body could not be decompressed", self.service, method, path
            ) from exc
        except (urllib3_errors.HTTPError, OSError) as exc:
            raise errors.UpstreamConnectionError(
                f"connection failed reading the body: {type(exc).__name__}",
                self.service,
                method,
                path,
            ) from exc

    def _read(
        self, response: requests.Response, method: str, path: str, started: float, cap: int
    ) -> bytes:
        """Read the body up to `cap` bytes and within the total deadline."""
        declared = response.headers.get("Content-Length", "")
        if (
            declared.isascii()
            and declared.isdigit()
            and int(declared) > cap
            and response.status_code < 300
        ):
            raise errors.ResponseTooLarge(
                f"body of {declared} bytes exceeds the cap of {cap}",
                self.service,
                method,
                path,
                response.status_code,
            )
        deadline = started + self.config.total_timeout
        chunks: list[bytes] = []
        size = 0
        # read1 returns whatever has arrived (at most one read timeout later), so the
        # total deadline is checked even when the upstream drips one byte at a time;
        # iter_content would block until a whole chunk is in.
        while chunk := response.raw.read1(_CHUNK, decode_content=True):
            size += len(chunk)
            chunks.append(chunk)
            if size > cap:
                if response.status_code >= 300:
                    break  # an error body only feeds an excerpt
                raise errors.ResponseTooLarge(
                    f"body exceeds the cap of {cap} bytes",
                    self.service,
                    method,
                    path,
                    response.status_code,
                )
            if time.monotonic() > deadline:
                raise errors.UpstreamTimeout(
                    f"body not complete after {self.config.total_timeout:.1f}s",
                    self.service,
                    method,
                    path,
                    response.status_code,
                )
        return b"".join(chunks)

    def _status_error(
        self, response: requests.Response, body: bytes, method: str, path: str
    ) -> errors.UpstreamError:
        """Map an error status to its exception class, in one place."""
        status = response.status_code
        args = (self.service, method, path, status, excerpt(body))
        if status < 400:
            # The host only, masked: a Location may carry credentials (user:token@host).
            location = redact(urlsplit(response.headers.get("Location", "")).netloc) or "?"
            return errors.UnexpectedRedirect(f"redirect to {location} not followed", *args)
        if status == 429:
            return errors.RateLimited(
                "rate limited", *args, _parse_retry_after(response.headers.get("Retry-After"))
            )
        if status in (401, 403):
            return errors.AuthError("not authorised", *args)
        if status == 404:
            return errors.NotFound("not found", *args)
        if status >= 500:
            return errors.ServerError("upstream server error", *args)
        return errors.ClientError("request rejected", *args)

    def _decode(
        self, response: requests.Response, body: bytes, method: str, path: str, decode: Decoder
    ) -> Payload:
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise errors.InvalidResponse(
                f"expected JSON, got content type {content_type or 'none'!r}",
                *self._error_args(method, path, response.status_code, body),
            )
        try:
            data = decode(body)
        except ValueError as exc:
            raise errors.InvalidResponse(
                f"malformed JSON: {exc}",
                *self._error_args(method, path, response.status_code, body),
            ) from exc
        links = {rel: link["url"] for rel, link in response.links.items() if "url" in link}
        return Payload(
            data=data,
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            links=links,
        )

    def _error_args(
        self, method: str, path: str, status: int, body: bytes
    ) -> tuple[str, str, str, int, str]:
        """The fields every error carries; the excerpt is built only when one is raised."""
        return (self.service, method, path, status, excerpt(body))

    def _log_failure(self, exc: errors.UpstreamError) -> None:
        """Log each failed call once; a 401 is an expected answer, not an error."""
        level = logging.INFO if exc.status == 401 else logging.ERROR
        if isinstance(exc, errors.HeldBack):
            level = logging.WARNING  # nothing failed: the job is put off, not lost
        log.log(
            level,
            "upstream call failed service=%s method=%s path=%s status=%s error=%s: %s",
            exc.service,
            exc.method,
            exc.path,
            exc.status if exc.status is not None else "-",
            type(exc).__name__,
            redact(exc.message),
        )


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # headers are latin-1: "²".isdigit()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def expect(condition: bool, message: str, client: ApiClient, path: str) -> None:
    """Raise `InvalidResponse` when an upstream body does not have the shape we rely on."""
    if not condition:
        raise errors.InvalidResponse(message, client.service, "GET", path)
