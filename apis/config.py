"""Shared client configuration for every upstream, read from the environment once.

Defaults are named here rather than scattered through calls. What belongs to one
upstream (its base URL, its token, its own jobs' variables) is declared by that upstream:
a settings model its registry entry names (`Upstream.settings`, an `UpstreamSettings`),
to which the registry adds the variables of its budget, read once with this one. A
missing optional value (an address, a token) does not stop the process from starting:
only the calls that need it fail, with `NotConfigured`, before any request is sent.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from redisconn.settings import RedisSection, RedisTarget
from upstreams import Upstream, all_upstreams

PROJECT_USER_AGENT = "api-layer-worker/0.1 (+https://github.com/api-layer-worker)"

DEFAULT_CONNECT_TIMEOUT = 3.05
DEFAULT_READ_TIMEOUT = 10.0
# Calls a worker process makes at once by default: its pool threads (WORKER_CONCURRENCY
# takes its default from here, settings/worker.py), and so the connections its HTTP
# pool keeps per upstream, one per concurrent job. Two numbers once, 32 threads and 16
# connections: every call above 16 opened a connection and closed it after use.
DEFAULT_CONCURRENT_CALLS = 32
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# A paged walk (every item of an upstream's list, page after page) stops with
# `PagingLimitExceeded` past these: an upstream whose `next` never ends, or whose
# `total` keeps growing, must not hold a job (and its memory) forever.
DEFAULT_MAX_PAGES = 500
DEFAULT_MAX_ITEMS = 50_000


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries transient failures of idempotent requests."""

    attempts: int = 4
    max_seconds: float = 20.0
    backoff_initial: float = 0.5
    backoff_max: float = 5.0
    retry_after_cap: float = 10.0


@dataclass(frozen=True)
class CircuitPolicy:
    """When one upstream's circuit opens, for how long, and through which Redis.

    `failure_threshold` transient failures of whole calls (after the client's own retries)
    within `window_seconds`, with no success in between, open the circuit for
    `cooldown_seconds`; 0 turns the breaker off.
    """

    failure_threshold: int = 0
    window_seconds: float = 60.0
    cooldown_seconds: float = 30.0


@dataclass(frozen=True)
class RateLimitPolicy:
    """The fleet-wide budget of one upstream (`apis.budget`): `rate` requests per second
    (the ceiling; 0 = none configured, learnt from the upstream's 429s), `concurrency`
    requests in flight at once (0 = unbounded).

    `burst` is the bucket size (0: half a second's worth); a request waits for its token
    at most `max_wait` seconds, beyond which the call is held back (`Throttled`). Bulk
    calls keep `bulk_share` of the rate when on-demand calls would take it all.
    """

    rate: float = 0.0
    burst: int = 0
    max_wait: float = 1.0
    concurrency: int = 0
    bulk_share: float = 0.1
    #: Whether an upstream with no rate configured learns one from its 429s (False: it
    #: has no budget at all, and costs Redis nothing).
    adaptive: bool = True

    @property
    def capacity(self) -> int:
        return self.burst or max(1, math.ceil(self.rate / 2))


@dataclass(frozen=True)
class UpstreamConfig:
    """Everything one client needs: where, how to authenticate, and its limits."""

    service: str
    base_url: str | None
    user_agent: str = PROJECT_USER_AGENT
    token: SecretStr | None = None
    token_scheme: str = "Token"  # noqa: S105 (an auth scheme name, not a secret)
    token_setting: str = ""
    base_url_setting: str = ""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    pool_size: int = DEFAULT_CONCURRENT_CALLS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_pages: int = DEFAULT_MAX_PAGES
    max_items: int = DEFAULT_MAX_ITEMS
    retry: RetryPolicy = RetryPolicy()
    # Shared state of the breaker and the rate limit (None: neither is used).
    state_redis: RedisTarget | None = None
    # Shorthand for a plain-URL `state_redis` (the tests' and scripts' usual case).
    state_redis_url: str | None = None
    state_key_prefix: str = ""
    circuit: CircuitPolicy = CircuitPolicy()
    rate_limit: RateLimitPolicy = RateLimitPolicy()

    def __post_init__(self) -> None:
        if self.state_redis is None and self.state_redis_url:
            object.__setattr__(self, "state_redis", RedisTarget.from_url(self.state_redis_url))

    @property
    def configured(self) -> bool:
        """Its base URL is set, and its token too when it takes one."""
        return self.base_url is not None and (not self.token_setting or self.token is not None)

    @property
    def total_timeout(self) -> float:
        """The longest one attempt may take, from connect to the last decoded byte."""
        return self.connect_timeout + 2 * self.read_timeout

    def body_cap(self, endpoint_cap: int | None = None) -> int:
        """The body cap of one endpoint: its own, never above HTTP_MAX_RESPONSE_BYTES."""
        if endpoint_cap is None:
            return self.max_response_bytes
        return min(endpoint_cap, self.max_response_bytes)


def _validate_base_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    try:
        parts.port  # noqa: B018 (raises ValueError on a port out of range)
    except ValueError as exc:
        raise ValueError(f"has an invalid port: {value!r}") from exc
    # Pagination links are followed only below the base path: with no path, any path of
    # the host (and, joined by string, another host) would do.
    if not parts.path.strip("/"):
        raise ValueError(f"must have a path, e.g. {parts.scheme}://{parts.netloc}/api/v1")
    return value.rstrip("/")


class UpstreamSettings(BaseSettings):
    """The base of an upstream's own settings model (`Upstream.settings`): each field is
    read from its upper-case environment name and checked at start with every other
    setting. Every `*_BASE_URL` field is checked as a base URL (absolute http(s), with a
    path), and an empty value of a field whose default is None (a token) is None."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _check_value(cls, value: object, info: ValidationInfo) -> object:
        name = info.field_name or ""
        if name.endswith("_base_url"):
            return _validate_base_url(value if isinstance(value, str) else None)
        if value == "" and cls.model_fields[name].default is None:
            return None
        return value


@cache
def upstream_settings_model(entry: Upstream) -> type[BaseModel]:
    """The settings of the upstream `entry` names: the model `entry.settings` names
    (`module:Class`; `UpstreamSettings` for an entry that names none), with a field for
    each of its budget variables (`budget_fields`), which every upstream has. A name that
    is not a pydantic model is a `TypeError`.

    Built once per entry, so its variables are read, checked at start and listed with
    the upstream's own."""
    base: type[BaseModel] = UpstreamSettings
    if entry.settings:
        module, _, name = entry.settings.partition(":")
        base = getattr(importlib.import_module(module), name)
        if not (isinstance(base, type) and issubclass(base, BaseModel)):
            raise TypeError(f"{entry.settings} is not a settings model")
    fields = budget_fields(entry)
    return create_model(
        base.__name__,
        __base__=base,
        __module__=base.__module__,
        __doc__=f"{base.__doc__ or ''}\n\nWith the budget variables of {entry.name!r}.",
        __validators__={"_blank_is_default": field_validator(*fields, mode="before")(_blank)},
        **fields,
    )


def budget_fields(entry: Upstream) -> dict[str, Any]:
    """The fields of the budget variables `entry` names (`Upstream.budget_settings`):
    its rate (requests/s, a number >= 0), its bucket size and its concurrency (integers
    >= 0), each defaulting to what the entry allows."""
    rate, burst, concurrency = (name.lower() for name in entry.budget_settings)
    return {
        rate: (float, Field(float(entry.rate_limit), ge=0, allow_inf_nan=False)),
        burst: (int, Field(0, ge=0)),
        concurrency: (int, Field(entry.concurrency, ge=0)),
    }


def _blank(cls: type[BaseModel], value: object, info: ValidationInfo) -> object:
    """A budget variable set to nothing (`<NAME>_RATE_LIMIT=`) is its default."""
    if isinstance(value, str) and not value.strip() and info.field_name:
        return cls.model_fields[info.field_name].default
    return value


class ApiSettings(RedisSection):
    """The API layer's settings; each field is read from the upper-case environment name.

    The Redis settings (`redisconn.settings`, read once for the process and shared with
    the worker's section) say where the circuit breakers and rate-limit buckets shared by
    every worker process live: the worker's results Redis. An empty REDIS_URL without
    Sentinel: the API layer keeps no shared state, so the breaker and shared rate limit
    are off.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    http_connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0, le=60)
    http_read_timeout: float = Field(DEFAULT_READ_TIMEOUT, gt=0, le=300)
    # The pool should hold one connection per concurrent job, so it follows the worker's
    # concurrency unless set on its own.
    http_pool_size: int = Field(
        DEFAULT_CONCURRENT_CALLS,
        ge=1,
        le=1000,
        validation_alias=AliasChoices("http_pool_size", "worker_concurrency"),
    )
    http_max_response_bytes: int = Field(DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    paging_max_pages: int = Field(DEFAULT_MAX_PAGES, ge=1, le=100_000)
    paging_max_items: int = Field(DEFAULT_MAX_ITEMS, ge=1, le=10_000_000)

    http_retry_attempts: int = Field(RetryPolicy.attempts, ge=1, le=10)
    http_retry_max_seconds: float = Field(RetryPolicy.max_seconds, gt=0, le=300)
    http_retry_backoff_initial: float = Field(RetryPolicy.backoff_initial, ge=0)
    http_retry_backoff_max: float = Field(RetryPolicy.backoff_max, ge=0)
    http_retry_after_cap: float = Field(RetryPolicy.retry_after_cap, ge=0)

    circuit_failure_threshold: int = Field(5, ge=0, le=1000)
    circuit_window_seconds: float = Field(CircuitPolicy.window_seconds, gt=0, le=3600)
    circuit_cooldown_seconds: float = Field(CircuitPolicy.cooldown_seconds, gt=0, le=600)
    # How many times one job may be put off (open circuit, no rate-limit token) before it
    # fails with a record; deferrals do not use up TASK_MAX_RETRIES.
    task_max_deferrals: int = Field(20, ge=0, le=1000)

    # Each upstream's budget (rate, burst, concurrency) is a field of its own settings
    # (`upstream_settings_model`), under the names its registry entry gives them.
    rate_limit_max_wait: float = Field(RateLimitPolicy.max_wait, ge=0, le=1)
    budget_bulk_share: float = Field(RateLimitPolicy.bulk_share, ge=0, le=1)
    budget_adaptive: bool = RateLimitPolicy.adaptive

    #: The upstreams' own settings, by the upstream's name, read once (`upstream_settings`),
    #: and the values given for their fields as keywords (`<name>_base_url=...`, in lower
    #: case as for this model's own fields).
    _upstreams: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    _upstream_values: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_upstream_values(
        cls, data: Any, handler: ModelWrapValidatorHandler[ApiSettings]
    ) -> ApiSettings:
        """Keywords that are fields of an upstream's model are kept for that model."""
        given: dict[str, Any] = {}
        if isinstance(data, dict):
            given = {key: value for key, value in data.items() if key not in cls.model_fields}
        built = handler(data)
        built._upstream_values = given
        return built

    @model_validator(mode="after")
    def _check_backoff(self) -> ApiSettings:
        if self.http_retry_backoff_max < self.http_retry_backoff_initial:
            raise ValueError("HTTP_RETRY_BACKOFF_MAX must be >= HTTP_RETRY_BACKOFF_INITIAL")
        return self

    def timeouts(self, entry: Upstream) -> tuple[float, float]:
        """The connect and read timeouts of the upstream `entry` names: its own, or the
        shared ones."""
        return (
            entry.connect_timeout or self.http_connect_timeout,
            entry.read_timeout or self.http_read_timeout,
        )

    @property
    def worst_case_call_seconds(self) -> float:
        """The longest one client call can take: the retry budget plus a last attempt, of
        the slowest upstream."""
        timeouts = [self.timeouts(upstream) for upstream in all_upstreams()]
        last_attempt = max(connect + 2 * read for connect, read in timeouts)
        return self.http_retry_max_seconds + last_attempt

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.http_retry_attempts,
            max_seconds=self.http_retry_max_seconds,
            backoff_initial=self.http_retry_backoff_initial,
            backoff_max=self.http_retry_backoff_max,
            retry_after_cap=self.http_retry_after_cap,
        )

    def upstream_settings(self, entry: Upstream) -> BaseModel:
        """The settings of the upstream `entry` names (its `settings` model), read from the
        environment once per process, with any value given to this object as a keyword."""
        model = upstream_settings_model(entry)
        found = self._upstreams.get(entry.name)
        if found is None:
            own = {k: v for k, v in self._upstream_values.items() if k in model.model_fields}
            found = model(**own)
            self._upstreams[entry.name] = found
        return found

    def keep_upstream_settings(self, name: str, settings: BaseModel) -> None:
        """Use `settings`, already read and checked, as the settings of the upstream
        `name`, unless values for them were given to this object."""
        if not any(key in type(settings).model_fields for key in self._upstream_values):
            self._upstreams[name] = settings

    def upstream_value(self, entry: Upstream, variable: str) -> Any:
        """The value of one variable of the upstream's own settings (None when its model
        has no such field)."""
        return getattr(self.upstream_settings(entry), variable.lower(), None)

    def base_url(self, entry: Upstream) -> str | None:
        """The value of the variable `entry.base_url_setting` names, in the entry's own
        settings model."""
        found = self.upstream_value(entry, entry.base_url_setting)
        return str(found) if found else None

    def token(self, entry: Upstream) -> SecretStr | None:
        """The value of the variable `entry.token_setting` names (None without one)."""
        if not entry.token_setting:
            return None
        found = self.upstream_value(entry, entry.token_setting)
        if found is None or isinstance(found, SecretStr):
            return found
        return SecretStr(str(found))

    def upstream(self, entry: Upstream) -> UpstreamConfig:
        """The configuration of the upstream `entry` names: its base URL and token from
        the variables the entry names, its user agent, budget and breaker from the entry,
        the shared limits filled in."""
        return UpstreamConfig(
            service=entry.name,
            base_url=self.base_url(entry),
            base_url_setting=entry.base_url_setting,
            user_agent=entry.user_agent or PROJECT_USER_AGENT,
            token=self.token(entry),
            token_scheme=entry.token_scheme,
            token_setting=entry.token_setting,
            connect_timeout=self.timeouts(entry)[0],
            read_timeout=self.timeouts(entry)[1],
            pool_size=self.http_pool_size,
            max_response_bytes=self.http_max_response_bytes,
            max_pages=self.paging_max_pages,
            max_items=self.paging_max_items,
            retry=self.retry_policy,
            # The fleet's shared state: on the Redis Cluster when there is one.
            state_redis=self.resolve_cluster() or self.resolve_redis(),
            state_key_prefix=self.result_key_prefix,
            circuit=CircuitPolicy(
                # An entry the breaker does not guard has it off (a threshold of 0).
                failure_threshold=self.circuit_failure_threshold if entry.breaker else 0,
                window_seconds=self.circuit_window_seconds,
                cooldown_seconds=self.circuit_cooldown_seconds,
            ),
            rate_limit=self.rate_limit_policy(entry),
        )

    def rate_limit_policy(self, entry: Upstream | None) -> RateLimitPolicy:
        """The budget of the upstream `entry` names: its rate and concurrency, unless the
        variables it names say otherwise (<NAME>_RATE_LIMIT, <NAME>_RATE_LIMIT_BURST,
        <NAME>_CONCURRENCY, fields of its settings); None (a client of no upstream) has
        none."""
        if entry is None:
            return RateLimitPolicy(
                max_wait=self.rate_limit_max_wait,
                bulk_share=self.budget_bulk_share,
                adaptive=self.budget_adaptive,
            )
        rate_name, burst_name, concurrency_name = entry.budget_settings
        return RateLimitPolicy(
            rate=self.upstream_value(entry, rate_name),
            burst=self.upstream_value(entry, burst_name),
            concurrency=self.upstream_value(entry, concurrency_name),
            max_wait=self.rate_limit_max_wait,
            bulk_share=self.budget_bulk_share,
            adaptive=self.budget_adaptive,
        )


_current: list[ApiSettings] = []


def get_settings() -> ApiSettings:
    """The API layer's section of the process-wide settings tree: the one the tree
    installed (`use_settings`, when the worker checks every setting at start), else read
    on first use. Kept, so a client's configuration costs nothing per job."""
    if not _current:
        _current[:] = [ApiSettings()]
    return _current[0]


def use_settings(settings: ApiSettings | None) -> None:
    """Make `settings` the process-wide section (None: read it again on next use)."""
    _current[:] = [] if settings is None else [settings]
