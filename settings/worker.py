"""The worker's section of the settings tree: how jobs run, the broker, what beat
schedules, logs and metrics (and, inherited, where Redis is: `redisconn.settings`).

Read once from the environment and validated at start, so a typo fails the worker before
it takes a job. The root of the tree is `settings.Settings`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from brokers import broker_kind
from redisconn.celery_config import CeleryConnection, connection_config
from redisconn.settings import DEFAULT_REDIS_URL, RedisSettings, RedisTarget

REDIS_ONLY = frozenset(
    {"BROKER_VISIBILITY_TIMEOUT", "BROKER_RESTORE_INTERVAL", "BROKER_HEARTBEAT_TIMEOUT"}
)
AMQP_ONLY = frozenset({"BROKER_CONSUMER_TIMEOUT"})


class WorkerSettings(RedisSettings):
    """Each field is read from its upper-case environment name (the Redis ones: see
    `redisconn.settings`)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # The worker always has a Redis: REDIS_URL cannot be empty here (Sentinel replaces it).
    redis_url: str = DEFAULT_REDIS_URL
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None

    worker_pool: Literal["threads", "prefork", "solo", "gevent", "eventlet"] = "threads"
    worker_concurrency: int = Field(32, ge=1, le=1000)
    worker_prefetch_multiplier: int = Field(2, ge=1, le=100)
    worker_max_memory_per_child_kb: int = Field(512_000, ge=0)

    # Freshness: a result younger than this is served from Redis without an upstream call.
    freshness_max_age: float = Field(300.0, ge=0)
    # Let a result's window follow the upstream's Cache-Control max-age instead, at most
    # FRESHNESS_UPSTREAM_MAX_AGE: off by default, so the window is the operator's.
    freshness_from_upstream: bool = False
    freshness_upstream_max_age: float = Field(3600.0, ge=0)
    # The single-flight lease of a key: renewed by its holder while it fetches, so a dead
    # holder delays the other jobs for that key by this much at most.
    single_flight_lock_seconds: float = Field(4.0, ge=0.5, le=60)
    # How long a job waits in its thread for another job's fetch before it is deferred
    # (the thread serves other keys meanwhile).
    single_flight_wait_seconds: float = Field(1.0, ge=0, le=30)

    task_max_retries: int = Field(3, ge=0, le=20)
    task_retry_backoff: float = Field(2.0, ge=0)
    task_retry_backoff_max: float = Field(300.0, ge=0)
    # A deferred job (open circuit, rate limit, another job's fetch) comes back within this.
    task_deferral_max_seconds: float = Field(60.0, gt=0, le=3600)
    task_soft_time_limit: float = Field(120.0, gt=0)
    task_time_limit: float = Field(150.0, gt=0)
    # Redis broker only. Unset: the smallest safe value (`safe_visibility_timeout`); set,
    # it may not be smaller, or a job still running or waiting its countdown is
    # delivered a second time.
    broker_visibility_timeout: int | None = Field(None, ge=1)
    # Redis broker only: how often a worker looks for jobs a dead worker left
    # unacknowledged and older than the visibility timeout.
    broker_restore_interval: int = Field(10, ge=1)
    # Redis broker only: a worker process whose heartbeat (sent every fifth of this) is
    # older than this is dead, and a live worker (one whose own last heartbeat is under
    # half of this old) puts the jobs it held back on their queues.
    broker_heartbeat_timeout: float = Field(5.0, ge=1, le=300)
    # Deliveries of one message, each ended without an acknowledgement (a dead worker, a
    # reject with requeue; on Redis also the visibility timeout), before it is parked in
    # its queue's `.dead` queue (or list, on Redis).
    broker_delivery_limit: int = Field(5, ge=1, le=1000)
    # RabbitMQ only: the server's `consumer_timeout` in seconds (RabbitMQ's default is
    # 30 minutes). A delivery unacknowledged for longer closes the worker's channel, so it
    # must exceed what a job can take from delivery to acknowledgement.
    broker_consumer_timeout: int = Field(1800, ge=1)
    result_expires: int = Field(86_400, ge=60)

    events_stream_maxlen: int = Field(100_000, ge=100)
    failures_stream_maxlen: int = Field(100_000, ge=100)

    # Beat: an interval of 0 removes the entry from the schedule.
    pokemon_catalog: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["bulbasaur", "charizard", "pikachu", "mewtwo", "mew"]
    )
    pokemon_refresh_interval: float = Field(3600.0, ge=0)
    # refresh_catalog sends this many names per job (0: one fetch_pokemon job per name),
    # each job fetching up to CATALOG_BATCH_CONCURRENCY of them at once.
    catalog_batch_size: int = Field(50, ge=0, le=500)
    catalog_batch_concurrency: int = Field(8, ge=1, le=64)
    cms_sync_interval: float = Field(900.0, ge=0)
    semaphore_sync_interval: float = Field(300.0, ge=0)
    beat_lock_timeout: int = Field(300, ge=10)

    # Prometheus metrics of this worker on http://0.0.0.0:METRICS_PORT/metrics; 0 turns
    # them off. Several workers on one host each need their own port.
    metrics_port: int = Field(9808, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("pokemon_catalog", mode="before")
    @classmethod
    def _split_catalog(cls, value: object) -> object:
        """`POKEMON_CATALOG` is a comma-separated list, or `*` for the whole index."""
        if isinstance(value, str):
            return [name.strip().lower() for name in value.split(",") if name.strip()]
        return value

    @field_validator("task_time_limit")
    @classmethod
    def _hard_above_soft(cls, value: float, info: ValidationInfo) -> float:
        soft = info.data.get("task_soft_time_limit")
        if soft is not None and value <= soft:
            raise ValueError("TASK_TIME_LIMIT must be greater than TASK_SOFT_TIME_LIMIT")
        return value

    @model_validator(mode="after")
    def _broker_settings_fit_the_broker(self) -> WorkerSettings:
        kind = broker_kind(self.broker_url)
        given = {name.upper() for name in self.model_fields_set}
        foreign = sorted(given & (AMQP_ONLY if kind == "redis" else REDIS_ONLY))
        if foreign:
            other = "RabbitMQ" if kind == "redis" else "Redis"
            raise ValueError(
                f"{', '.join(foreign)} only apply to the {other} broker, and the broker "
                f"here is {'Redis' if kind == 'redis' else 'RabbitMQ'} (CELERY_BROKER_URL)"
            )
        if kind == "redis":
            safe = self.safe_visibility_timeout
            if self.broker_visibility_timeout is not None and self.broker_visibility_timeout < safe:
                raise ValueError(
                    f"BROKER_VISIBILITY_TIMEOUT ({self.broker_visibility_timeout}s) must be at "
                    f"least {safe}s: 2 x TASK_TIME_LIMIT + the longest countdown "
                    f"({self.largest_countdown:g}s: TASK_RETRY_BACKOFF_MAX or "
                    "TASK_DEFERRAL_MAX_SECONDS), or a job still running or waiting its "
                    "countdown is delivered twice"
                )
        else:
            needed = self.task_time_limit * (1 + self.worker_prefetch_multiplier)
            if self.broker_consumer_timeout <= needed:
                raise ValueError(
                    f"BROKER_CONSUMER_TIMEOUT ({self.broker_consumer_timeout}s) must exceed "
                    f"TASK_TIME_LIMIT x (1 + WORKER_PREFETCH_MULTIPLIER) = {needed:g}s: a "
                    "prefetched job may wait behind that many others before it runs; raise "
                    "RabbitMQ's consumer_timeout and this setting together"
                )
        return self

    @property
    def redis(self) -> RedisTarget:
        """The results Redis: REDIS_URL, or the master the sentinels name."""
        target = self.resolve_redis()
        assert target is not None  # REDIS_URL is never empty here
        return target

    @property
    def celery_connection(self) -> CeleryConnection:
        """Broker, backend and beat settings for Celery (the results Redis by default)."""
        return connection_config(
            self.redis,
            broker_url=self.celery_broker_url,
            result_backend=self.celery_result_backend,
            beat_retry_seconds=self.beat_lock_timeout,
        )

    @property
    def largest_countdown(self) -> float:
        """The longest a job can wait for its next delivery: a retry's countdown is capped
        at TASK_RETRY_BACKOFF_MAX (a 429's Retry-After included), a deferral's at
        TASK_DEFERRAL_MAX_SECONDS."""
        return max(self.task_retry_backoff_max, self.task_deferral_max_seconds)

    @property
    def safe_visibility_timeout(self) -> int:
        """The smallest visibility timeout that never redelivers a job still in hand.

        On the Redis broker a job stays unacknowledged from delivery to the end of its
        run: it may wait for a thread (at most about one time limit), run (at most one
        time limit), or, as a retry or deferral, sit in the worker for its countdown.
        With the defaults: 2 x 150 + 300 = 600 s.
        """
        return math.ceil(2 * self.task_time_limit + self.largest_countdown)

    @property
    def visibility_timeout(self) -> int:
        return self.broker_visibility_timeout or self.safe_visibility_timeout

    @property
    def broker_redis(self) -> RedisTarget | None:
        """The broker's Redis (the results Redis unless CELERY_BROKER_URL names another);
        None when the broker is not Redis."""
        if self.celery_broker_url is None:
            return self.redis
        scheme = self.celery_broker_url.split("://", 1)[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            return None
        return RedisTarget.from_url(
            self.celery_broker_url, self.tls_files() if scheme == "rediss" else None
        )

    @property
    def broker_url(self) -> str:
        url: str = self.celery_connection.settings["broker_url"]
        return url

    @property
    def result_backend(self) -> str:
        url: str = self.celery_connection.settings["result_backend"]
        return url

    @property
    def upstream_max_age(self) -> float | None:
        """The cap of an upstream-given freshness window; None when it is not followed."""
        return self.freshness_upstream_max_age if self.freshness_from_upstream else None

    @property
    def whole_catalog(self) -> bool:
        return self.pokemon_catalog == ["*"]


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
