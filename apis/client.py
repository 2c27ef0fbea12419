"""The HTTP plumbing every upstream client shares.

One urllib3 `PoolManager` per upstream per process (created lazily, re-created after a
fork, so it is safe under Celery's prefork and threads pools), a connect and read
timeout on every call plus one deadline for the whole exchange (`apis.deadline`), a
bounded response size at every stage of its decoding, no redirects, links followed only
below the base URL, the one retry policy, and the one place where transport failures and
error statuses become `apis.errors` exceptions.

Why urllib3 and not requests: requests is urllib3 plus sessions, cookies, proxies from
the environment, netrc, redirects and retries, and this client turned every one of those
off; what was left was its per-request preparation, about 0.3 ms of CPU per call, a
tenth of a whole job (docs/performance.md). urllib3 is the same connection pool and
HTTP code underneath, with TLS verified against the same certifi bundle.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.client import HTTPException, LineTooLong
from typing import Any, ClassVar
from urllib.parse import SplitResult, unquote, urlencode, urljoin, urlsplit

import certifi
import orjson
import urllib3
from urllib3 import exceptions as urllib3_errors

from apis import deadline, errors
from apis.breaker import CircuitBreaker
from apis.budget import Budget
from apis.conditional import Validators, freshness_lifetime, sent_validators, with_validators
from apis.config import ApiSettings, UpstreamConfig
from apis.inflate import Decoding, OverCap, UnsupportedEncoding
from apis.retry import Sleep, build_retrying
from telemetry import metrics, tracing
from telemetry.redact import excerpt, redact, register_secret
from upstreams import Upstream, all_upstreams

log = logging.getLogger("apis")

Decoder = Callable[[bytes], Any]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHUNK = 64 * 1024
_ERROR_BODY_LIMIT = 2048


@dataclass(frozen=True)
class Payload:
    """A decoded upstream body with the validators the results contract stores.

    `not_modified` is a `304` to a conditional fetch: no body, `data` is None, and the
    caller's stored copy is still good (`etag` / `last_modified` are then the ones the
    304 carried, or the ones sent). `max_age` is the answer's freshness lifetime from
    its `Cache-Control`, None when it gave none.
    """

    data: Any
    etag: str | None = None
    last_modified: str | None = None
    links: Mapping[str, str] = field(default_factory=dict)
    not_modified: bool = False
    max_age: float | None = None


class ApiClient:
    """Base class of one upstream's client; subclasses add the resource methods."""

    service: ClassVar[str] = "upstream"

    def __init__(self, config: UpstreamConfig, *, sleep: Sleep = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._pool: urllib3.PoolManager | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        #: Sent with every request; the token, when there is one, is added per call.
        self.default_headers = {
            "User-Agent": config.user_agent,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
        }
        self.breaker = CircuitBreaker(config)
        self.budget = Budget(config, sleep=sleep)
        if config.token is not None:
            register_secret(config.token.get_secret_value())

    @classmethod
    def entry(cls) -> Upstream:
        """The registry entry whose `client` names this class (or the nearest base class
        an entry names): where its base URL variable, budget and breaker are declared."""
        entries = {upstream.client: upstream for upstream in all_upstreams()}
        for klass in cls.__mro__:
            found = entries.get(f"{klass.__module__}:{klass.__qualname__}")
            if found is not None:
                if found.name != cls.service:
                    raise LookupError(
                        f"{found.client} serves upstream {found.name!r} but names itself "
                        f"{cls.service!r}: set its `service` to the entry's name"
                    )
                return found
        raise LookupError(
            f"{cls.__module__}:{cls.__qualname__} is the client of no upstream entry (upstreams/)"
        )

    @classmethod
    def configure(cls, settings: ApiSettings) -> UpstreamConfig:
        """This upstream's configuration, from its registry entry and the variables it
        names."""
        return settings.upstream(cls.entry())

    def probe(self) -> object:
        """One cheap call that proves the upstream answers (`apiworker health`); every
        subclass defines it."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> ApiClient:
        return cls(cls.configure(settings))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.config.base_url!r})"

    # -- connection pool ----------------------------------------------------------

    @property
    def pool(self) -> urllib3.PoolManager:
        """This process's pool; a forked child builds its own (sockets don't fork)."""
        pid = os.getpid()
        if self._pool is None or self._pid != pid:
            with self._lock:
                if self._pool is None or self._pid != pid:
                    self._pool = self._new_pool()
                    self._pid = pid
        return self._pool

    def _new_pool(self) -> urllib3.PoolManager:
        # No proxy variables, no ~/.netrc: PoolManager reads neither, so credentials come
        # only from our settings. It keeps HTTP_POOL_SIZE connections per origin; a burst
        # above it (a catalog batch fetching several names per thread) opens extra ones
        # that are closed after use. Blocking instead would cap such a burst at the pool
        # size and make threads queue for connections.
        manager = urllib3.PoolManager(
            num_pools=4,  # one origin per upstream (links to other hosts are refused)
            maxsize=self.config.pool_size,
            block=False,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
        )
        # Connections the deadline watchdog can shut (apis/deadline.py).
        manager.pool_classes_by_scheme = deadline.POOL_CLASSES
        return manager

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
            self._pool = None

    # -- calls --------------------------------------------------------------------

    def fetch(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        decode: Decoder = orjson.loads,
        validators: Validators | None = None,
        max_bytes: int | None = None,
    ) -> Payload:
        """GET `path`; with `validators` it is conditional (see `apis.conditional`).

        `max_bytes` is the endpoint's own body cap (never above HTTP_MAX_RESPONSE_BYTES).
        """
        return self.request(
            "GET", path, params=params, decode=decode, validators=validators, max_bytes=max_bytes
        )

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        decode: Decoder = orjson.loads,
        validators: Validators | None = None,
        max_bytes: int | None = None,
    ) -> Payload:
        """Send one logical request: retried when idempotent, mapped errors, logged once.

        `path_or_url` is a path below the base URL (starting with `/`), or a link an
        upstream gave (a pagination link), which is followed only below the base URL
        (`follow`). `decode` turns the body into data and raises ValueError on
        malformed input; a client may pass a typed decoder that reads only the fields it
        needs. `validators` make the request conditional: a 304 is then a success
        (`Payload.not_modified`), never retried. `max_bytes` is the endpoint's body cap.
        """
        method = method.upper()
        url = self._url(method, path_or_url)
        path = urlsplit(url).path
        cap = self.config.body_cap(max_bytes)
        headers = with_validators(self._auth_headers(method, path), validators)
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        # An open circuit refuses the call before anything is sent (raises CircuitOpen).
        permit = self.breaker.before_call(method, path)
        try:
            if not idempotent:
                payload = self._send(method, url, path, params, json, headers, decode, cap)
            else:
                failed: list[errors.UpstreamError] = []

                def attempt() -> Payload:
                    try:
                        return self._send(
                            method, url, path, params, json, headers, decode, cap,
                            resend=len(failed),
                        )  # fmt: skip
                    except errors.UpstreamError as exc:
                        failed.append(exc)
                        raise

                retrying = build_retrying(
                    self.config.retry,
                    service=self.service,
                    sleep=self._sleep,
                    budgeted=self.budget.enabled,
                )
                try:
                    payload = retrying(attempt)
                except (errors.Throttled, errors.RateLimited) as exc:
                    # A 429 the budget learnt from is a pause, not a failure: the job is
                    # put off like a call the budget held back, without using retries.
                    spent = (errors.HeldBack, errors.RateLimited)
                    sent = [exc for exc in failed if not isinstance(exc, spent)]
                    if sent:
                        # The call did reach the upstream and fail: report that, so the
                        # job's retry budget pays for it rather than a free deferral.
                        raise sent[-1] from None
                    if isinstance(exc, errors.RateLimited) and self.budget.enabled:
                        raise self.budget.paused(exc) from None
                    raise
        except errors.UpstreamError as exc:
            self.breaker.after_call(permit, exc)
            self._log_failure(exc)
            raise
        except BaseException as exc:
            self.breaker.after_call(permit, exc)
            raise
        self.breaker.after_call(permit, None)
        if validators:
            _count_revalidation(self.service, payload)
        return payload

    def _url(self, method: str, path_or_url: str) -> str:
        base = self.config.base_url
        if base is None:
            raise errors.NotConfigured(
                f"{self.service} is not configured: set {self.config.base_url_setting}",
                self.service,
                method,
            )
        if path_or_url.startswith("/") and not path_or_url.startswith("//"):
            return base + path_or_url  # our own path (its parameters checked by apis.paths)
        return self.follow(path_or_url, method)

    def follow(self, link: object, method: str = "GET", where: str = "") -> str:
        """The absolute URL of a link an upstream gave, if it stays below the base URL.

        Joined as a browser would (`urljoin` against the base), then compared parsed:
        the same scheme, host and port, no userinfo (but the base URL's own), and a
        path under the base path with no dot segments, percent-encoded or not. Anything
        else raises `InvalidResponse`, so a link can neither send the token to another
        host nor reach another endpoint of this one.
        `where` is the path of the answer that carried the link, for the error.
        """
        base = self.config.base_url or ""

        def refuse(why: str) -> errors.InvalidResponse:
            return errors.InvalidResponse(
                f"refusing to follow a link: {why}", self.service, method, where
            )

        if not isinstance(link, str):
            raise refuse(f"expected a URL string, got {type(link).__name__}")
        if not link.isprintable() or " " in link or "\\" in link:
            raise refuse("it holds a space, a backslash or a control character")
        try:
            target = urlsplit(urljoin(base + "/", link))
            origin = urlsplit(base)
            same_origin = _origin(target) == _origin(origin)
        except ValueError:  # a stray '[' (an unclosed IPv6 host), a port out of range
            raise refuse("it is not a valid URL") from None
        if "@" in target.netloc and target.netloc != origin.netloc:
            raise refuse("it carries credentials (userinfo)")
        if not same_origin:
            raise refuse(f"it leads to another host: {target.hostname or '?'}")
        prefix = origin.path.rstrip("/") + "/"
        # Decoded as a server may decode it: `%2e%2e`, `..%2f..` and `%5c` are dot
        # segments and backslashes too.
        decoded = unquote(target.path)
        dot_segments = {".", ".."} & set(decoded.replace("\\", "/").split("/"))
        if not target.path.startswith(prefix) or dot_segments:
            raise refuse(f"its path is outside {prefix}")
        return target.geturl()

    def _auth_headers(self, method: str, path: str) -> dict[str, str]:
        """The headers of one request: the defaults, and the token when there is one."""
        token = self.config.token
        if token is None:
            if self.config.token_setting:
                raise errors.NotConfigured(
                    f"{self.service} needs a token: set {self.config.token_setting}",
                    self.service,
                    method,
                    path,
                )
            return self.default_headers
        return {
            **self.default_headers,
            "Authorization": f"{self.config.token_scheme} {token.get_secret_value()}",
        }

    def _send(
        self,
        method: str,
        url: str,
        path: str,
        params: Mapping[str, str | int] | None,
        json: Any,
        headers: dict[str, str],
        decode: Decoder,
        cap: int,
        *,
        resend: int = 0,
    ) -> Payload:
        """One attempt: one HTTP request, its whole body read, decoded or mapped to an error.

        The whole exchange, from connect to the last byte decoded, is due within the total
        deadline, which the watchdog enforces on the socket (`apis.deadline`). `resend`
        counts the attempts of the same call before this one (for its span).
        """
        # Every attempt reaches the upstream, so every attempt takes a token (or raises
        # Throttled, which is not retried in place); its permit is freed once answered.
        ticket = self.budget.acquire(method, path)
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        request_body = None
        if json is not None:
            request_body = orjson.dumps(json)
            headers = {**headers, "Content-Type": "application/json"}
        span = tracing.start_attempt(self.service, method, url, resend)
        if span is not None:
            headers = tracing.trace_headers(headers, span)
        started = time.monotonic()
        outcome = "error"
        try:
            with (
                deadline.exchange(started + self.config.total_timeout) as watched,
                self._mapped_transport_errors(method, path, watched),
            ):
                response = self.pool.urlopen(
                    method,
                    url,
                    body=request_body,
                    headers=headers,
                    timeout=self._timeout,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=False,
                )
                complete = False
                try:
                    outcome = str(response.status)
                    if response.status == 304:
                        payload = self._not_modified(response, headers, method, path)
                        complete = True  # a 304 has no body: the connection stays usable
                    elif response.status >= 300:
                        body = self._read(response, method, path, started, _ERROR_BODY_LIMIT)
                        self.budget.answered(
                            response.status,
                            _parse_retry_after(response.headers.get("Retry-After")),
                        )
                        raise self._status_error(response, body, method, path)
                    else:
                        body = self._read(response, method, path, started, cap)
                        complete = True
                finally:
                    # Ended before the connection is handed back, so the watchdog never
                    # shuts one that another call has taken from the pool since.
                    if deadline.end(watched):
                        complete = False  # cut short: what was read cannot be trusted
                    if not complete:
                        # Unread bytes may remain: the connection must not be reused.
                        response.close()
                    response.release_conn()
                if not complete:  # the deadline passed just as the body ended
                    raise self._timed_out(method, path, response.status)
            if response.status == 304:
                return payload
            return self._decode(response, body, method, path, decode)
        except errors.TransportError as exc:
            outcome = "timeout" if isinstance(exc, errors.UpstreamTimeout) else "connection"
            raise
        finally:
            self.budget.release(ticket, outcome)
            metrics.UPSTREAM_REQUESTS.labels(self.service, method, outcome).inc()
            metrics.UPSTREAM_LATENCY.labels(self.service).observe(time.monotonic() - started)
            if span is not None:
                tracing.end_attempt(span, outcome, sys.exc_info()[1])

    def _timed_out(self, method: str, path: str, status: int | None) -> errors.UpstreamTimeout:
        return errors.UpstreamTimeout(
            f"answer not complete after {self.config.total_timeout:.1f}s",
            self.service,
            method,
            path,
            status,
        )

    @contextmanager
    def _mapped_transport_errors(
        self, method: str, path: str, watched: deadline.Exchange
    ) -> Iterator[None]:
        """Translate urllib3 and socket exceptions into the error model, in one place.

        With retries off, urllib3 raises the error itself rather than MaxRetryError. An
        exchange the watchdog cut short is a timeout, whatever the cut looked like.
        """
        try:
            yield
        except errors.UpstreamTimeout:
            raise
        except Exception as exc:
            if watched.expired:
                raise self._timed_out(method, path, None) from None
            if isinstance(exc, errors.UpstreamError):
                raise
            mapped = self._mapped(exc, method, path)
            if mapped is exc:
                raise
            raise mapped from exc

    def _mapped(self, exc: Exception, method: str, path: str) -> Exception:
        """The error-model exception of one foreign exception (others pass unchanged)."""
        if isinstance(exc, urllib3_errors.NewConnectionError):
            # Checked first: urllib3 2 still derives it from ConnectTimeoutError.
            return errors.UpstreamConnectionError(
                f"connection to {self.endpoint} failed: {type(exc).__name__}",
                self.service, method, path,
            )  # fmt: skip
        if isinstance(exc, urllib3_errors.ConnectTimeoutError):
            return errors.UpstreamTimeout(
                f"connecting to {self.endpoint} timed out: {type(exc).__name__}",
                self.service, method, path,
            )  # fmt: skip
        if isinstance(exc, urllib3_errors.ReadTimeoutError):
            return errors.UpstreamTimeout(
                "timed out reading the answer", self.service, method, path
            )
        if isinstance(exc, urllib3_errors.DecodeError):
            return errors.InvalidResponse(
                "body could not be decompressed", self.service, method, path
            )
        if _is_protocol_violation(exc):
            # Too many header lines, or one too long: the upstream will send it again.
            return errors.ProtocolViolation(
                f"not valid HTTP: {_protocol_cause(exc)}", self.service, method, path
            )
        if isinstance(exc, urllib3_errors.HTTPError | OSError | HTTPException):
            return errors.UpstreamConnectionError(
                f"connection to {self.endpoint} failed: {type(exc).__name__}",
                self.service, method, path,
            )  # fmt: skip
        return exc

    @property
    def endpoint(self) -> str:
        """`host:port` of the base URL, never its credentials: what a connection error
        names, so the reader knows which address did not answer."""
        parts = urlsplit(self.config.base_url or "")
        if not parts.hostname:
            return "?"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    def _read(
        self,
        response: urllib3.BaseHTTPResponse,
        method: str,
        path: str,
        started: float,
        cap: int,
    ) -> bytes:
        """Read the body up to `cap` bytes, raw and at every decoding stage, within the
        total deadline. An error body (status >= 300) is only read up to `cap` for its
        excerpt, never refused."""
        declared = response.headers.get("Content-Length", "")
        if (
            declared.isascii()
            and declared.isdigit()
            and int(declared) > cap
            and response.status < 300
        ):
            raise errors.ResponseTooLarge(
                f"body of {declared} bytes exceeds the cap of {cap}",
                self.service,
                method,
                path,
                response.status,
            )
        try:
            decoding = Decoding.for_header(response.headers.get("Content-Encoding", ""), cap)
        except UnsupportedEncoding as exc:
            if response.status >= 300:
                return b""  # the status says what went wrong; the body only its excerpt
            raise errors.InvalidResponse(
                str(exc), self.service, method, path, response.status
            ) from None
        deadline_at = started + self.config.total_timeout
        chunks: list[bytes] = []
        try:
            # read1 returns whatever has arrived (at most one read timeout later), so the
            # total deadline is checked between reads even when the upstream drips one
            # byte at a time; the watchdog cuts a read that would itself outlast it.
            while data := response.read1(_CHUNK, decode_content=False):
                chunk = decoding.feed(data)
                if chunk:  # an empty one still passes the deadline check below
                    chunks.append(chunk)
                if time.monotonic() > deadline_at:
                    raise self._timed_out(method, path, response.status)
            chunks.append(decoding.flush())
        except OverCap as exc:
            if response.status >= 300:
                return b"".join(chunks)  # an error body only feeds an excerpt
            raise errors.ResponseTooLarge(
                str(exc), self.service, method, path, response.status
            ) from None
        # Most bodies arrive in one raw read and inflate to one chunk: joining that with
        # the decoder's empty flush would copy every byte once more.
        chunks = [chunk for chunk in chunks if chunk]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _status_error(
        self, response: urllib3.BaseHTTPResponse, body: bytes, method: str, path: str
    ) -> errors.UpstreamError:
        """Map an error status to its exception class, in one place."""
        status = response.status
        args = (self.service, method, path, status, excerpt(body))
        if status < 400:
            # The host only (UpstreamError masks secrets and escapes control characters):
            # a Location may carry credentials (user:token@host).
            return errors.UnexpectedRedirect(
                f"redirect to {_location_host(response.headers.get('Location'))} not followed",
                *args,
            )
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
        self,
        response: urllib3.BaseHTTPResponse,
        body: bytes,
        method: str,
        path: str,
        decode: Decoder,
    ) -> Payload:
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise errors.InvalidResponse(
                f"expected JSON, got content type {content_type or 'none'!r}",
                *self._error_args(method, path, response.status, body),
            )
        try:
            data = decode(body)
        except (ValueError, RecursionError) as exc:
            # A decoder says malformed (orjson, msgspec: ValueError) or gives up on deep
            # nesting (msgspec: RecursionError); either way the body cannot be used.
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise errors.InvalidResponse(
                f"unusable JSON: {what}",
                *self._error_args(method, path, response.status, body),
            ) from None
        links = self._links(response.headers.get("Link"), method, path)
        return Payload(
            data=data,
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            links=links,
            max_age=freshness_lifetime(response.headers),
        )

    def _links(self, value: str | None, method: str, path: str) -> dict[str, str]:
        try:
            return _links(value)
        except ValueError:
            raise errors.InvalidResponse(
                "unparsable Link header", self.service, method, path
            ) from None

    def _not_modified(
        self,
        response: urllib3.BaseHTTPResponse,
        headers: Mapping[str, str],
        method: str,
        path: str,
    ) -> Payload:
        """A 304: the stored copy is still good, with the validators it now has.

        Only an answer to a request that sent a validator (in `headers`) can be a 304;
        any other is an upstream bug, and an answer without a body cannot be used.
        """
        validators = sent_validators(headers)
        if not validators:
            raise errors.InvalidResponse(
                "304 Not Modified to a request that sent no validator",
                self.service,
                method,
                path,
                response.status,
            )
        return Payload(
            data=None,
            etag=response.headers.get("ETag") or validators.etag,
            last_modified=response.headers.get("Last-Modified") or validators.last_modified,
            not_modified=True,
            max_age=freshness_lifetime(response.headers),
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


def _count_revalidation(service: str, payload: Payload) -> None:
    """One conditional call's outcome: the stored copy still good, or a new body."""
    outcome = "not_modified" if payload.not_modified else "modified"
    metrics.REVALIDATIONS.labels(service, outcome).inc()


def _links(value: str | None) -> dict[str, str]:
    """rel -> URL of a `Link` header (RFC 8288), as requests' `Response.links` has it.

    The URLs are as the upstream wrote them: `ApiClient.follow` decides whether one
    may be followed.
    """
    if not value:
        return {}
    # Imported here: only paged APIs send the header, and requests costs a worker ~4 MB.
    from requests.utils import parse_header_links

    links: dict[str, str] = {}
    for link in parse_header_links(value):
        url = link.get("url")
        rel = link.get("rel") or url
        if url and rel:
            links[rel] = url
    return links


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    """Scheme, host and port of a parsed URL, the port made explicit (raises ValueError
    for a port out of range)."""
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port


def _location_host(location: str | None) -> str:
    """The host a redirect names, for its error: never the credentials, never raising."""
    try:
        host = urlsplit(location or "").hostname
    except ValueError:
        return "an unparsable Location"
    return host or "?"


def _is_protocol_violation(exc: BaseException) -> bool:
    """Whether http.client refused the answer's head: too many header lines, or a line
    over its limit (urllib3 wraps these in ProtocolError)."""
    cause = _protocol_cause(exc)
    return isinstance(cause, LineTooLong) or (
        type(cause) is HTTPException and "more than" in str(cause)
    )


def _protocol_cause(exc: BaseException) -> BaseException:
    if isinstance(exc, urllib3_errors.ProtocolError) and len(exc.args) > 1:
        inner = exc.args[1]
        if isinstance(inner, BaseException):
            return inner
    return exc


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
