"""One error model for every upstream.

Every failure of an upstream call is raised as one of these, mapped in one place
(`apis.client`); nothing above `apis/` ever sees a `requests` exception or a raw response.

    UpstreamError
    ├── NotConfigured          the upstream or its credential is not configured; no request sent
    ├── InvalidParameter       a path parameter is unsafe or malformed; no request sent
    ├── HeldBack               a local guard held the call back; no request sent; retry later
    │   ├── CircuitOpen               the upstream's circuit breaker is open
    │   └── Throttled                 no rate-limit token within the wait bound
    ├── TransportError         the request did not complete
    │   ├── UpstreamConnectionError   refused, reset, DNS, truncated body
    │   └── UpstreamTimeout           connect or read timeout, or the total deadline
    ├── HTTPStatusError        the upstream answered with an error status
    │   ├── ServerError               5xx
    │   ├── RateLimited               429, with the parsed Retry-After
    │   ├── AuthError                 401 / 403
    │   ├── NotFound                  404
    │   └── ClientError               any other 4xx
    └── InvalidResponse        the answer cannot be used
        ├── UnexpectedRedirect        a 3xx (redirects are never followed)
        ├── ResponseTooLarge          the body exceeds the configured cap
        ├── ProtocolViolation         not valid HTTP (too many or too long header lines)
        └── PagingLimitExceeded       a paged walk passed PAGING_MAX_PAGES or _ITEMS

Every argument is passed positionally to `Exception.__init__`, so each class survives a
pickle round trip and Celery's JSON exception transport (both rebuild it from `args`).
One constructor serves every class: `retry_after` (the seconds a 429 or a guard of ours
asks us to wait) is the seventh argument, in `args` only when given, and a class that
always has one says so with its defaults (`default_status`, `default_retry_after`).

The text arguments (message, path, excerpt) are cleaned in `UpstreamError.__init__`
itself: registered secrets masked and control characters escaped, before they reach
`args`. Every channel an exception travels through (Celery's result backend stores
`exc_message` from `args`, a span's `record_exception` takes `str()`, logs, failure
records) therefore only ever sees the cleaned text.
"""

from __future__ import annotations

from typing import ClassVar

from telemetry.redact import clean

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


class UpstreamError(Exception):
    """Base class: something went wrong talking to an upstream service."""

    transient: ClassVar[bool] = False
    #: The status and the wait of an instance built without them.
    default_status: ClassVar[int | None] = None
    default_retry_after: ClassVar[float | None] = None

    def __init__(
        self,
        message: str,
        service: str = "",
        method: str = "",
        path: str = "",
        status: int | None = None,
        body_excerpt: str = "",
        retry_after: float | None = None,
    ) -> None:
        message, path, body_excerpt = clean(message), clean(path), clean(body_excerpt)
        wait = () if retry_after is None else (retry_after,)
        super().__init__(message, service, method, path, status, body_excerpt, *wait)
        self.message = message
        self.service = service
        self.method = method
        self.path = path
        self.status = self.default_status if status is None else status
        self.body_excerpt = body_excerpt
        self.retry_after = self.default_retry_after if retry_after is None else retry_after

    @property
    def is_transient(self) -> bool:
        """Whether trying the same request again later may succeed."""
        return self.transient

    def __str__(self) -> str:
        where = " ".join(part for part in (self.service, self.method, self.path) if part)
        status = f" -> {self.status}" if self.status is not None else ""
        return f"{self.message} [{where}{status}]" if where or status else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, service={self.service!r}, "
            f"method={self.method!r}, path={self.path!r}, status={self.status!r})"
        )


class NotConfigured(UpstreamError):
    """The upstream (or a credential it needs) is not configured; no request was sent."""


class InvalidParameter(UpstreamError, ValueError):
    """A path or query parameter was rejected before any request was sent."""


class HeldBack(UpstreamError):
    """No request was sent: a guard of ours says to try again in `retry_after` seconds.

    Transient by nature, so other callers treat it like an outage; the task layer defers
    the whole job instead of retrying it, and the client never retries it in place (the
    guard would only say no again).
    """

    transient = True
    #: A guard always says how long to wait (0: at once).
    retry_after: float
    default_retry_after = 0.0
    #: A deferred job comes back after `retry_after` plus up to this share of it (at
    #: least `jitter_floor` seconds), so held-back jobs do not all return at once.
    jitter_fraction = 0.5
    jitter_floor = 1.0


class CircuitOpen(HeldBack):
    """The upstream failed repeatedly; calls are refused until its cool-down ends."""


class Throttled(HeldBack):
    """The shared rate limit has no token for this upstream soon enough to wait for it."""


class TransportError(UpstreamError):
    """The request did not complete: no usable HTTP answer arrived."""

    transient = True


class UpstreamConnectionError(TransportError):
    """The connection failed: refused, reset, or closed before the whole body arrived."""


class UpstreamTimeout(TransportError):
    """The upstream took longer than the connect, read or total timeout."""


class HTTPStatusError(UpstreamError):
    """The upstream answered with an error status."""

    @property
    def is_transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES


class ServerError(HTTPStatusError):
    """A 5xx answer; only 502, 503 and 504 are worth retrying."""


class RateLimited(HTTPStatusError):
    """A 429 answer; `retry_after` holds the seconds the upstream asked us to wait (None:
    it did not say)."""

    default_status = 429


class AuthError(HTTPStatusError):
    """A 401 or 403 answer: the credential is missing, wrong or lacks permission."""


class NotFound(HTTPStatusError):
    """A 404 answer: the resource does not exist upstream."""


class ClientError(HTTPStatusError):
    """Any other 4xx answer: the request itself is wrong and will stay wrong."""


class InvalidResponse(UpstreamError):
    """The answer arrived but is unusable: not JSON, the wrong content type or shape."""


class UnexpectedRedirect(InvalidResponse):
    """A 3xx answer: redirects are never followed, so a moved upstream is a config error."""


class ResponseTooLarge(InvalidResponse):
    """The body is larger than the configured cap; reading stopped there."""


class ProtocolViolation(InvalidResponse):
    """The answer is not valid HTTP (a header flood, a header line over the limit).

    Permanent: an upstream that sends it will send it again, so it costs one call.
    """


class PagingLimitExceeded(InvalidResponse):
    """A paged walk went past its page or item limit; its message names the setting."""
