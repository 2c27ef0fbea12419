"""The worker's section of the settings tree: how jobs run, the broker, what beat
schedules, logs and metrics (and, inherited, where Redis is: `redisconn.settings`).

Read once from the environment and validated at start, so a typo fails the worker before
it takes a job. The root of the tree is `settings.Settings`.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from apis.config import DEFAULT_CONCURRENT_CALLS
from brokers import ALL_QUEUES, broker_kind, broker_scheme_supported, redis_broker_scheme
from redisconn.celery_config import CeleryConnection, connection_config
from redisconn.settings import DEFAULT_REDIS_URL, RedisSection, RedisTarget

REDIS_ONLY = frozenset(
    {"BROKER_VISIBILITY_TIMEOUT", "BROKER_RESTORE_INTERVAL", "BROKER_HEARTBEAT_TIMEOUT"}
)
AMQP_ONLY = frozenset({"BROKER_CONSUMER_TIMEOUT"})
#: Defaults that differ on RabbitMQ (docs/reliability.md, "RabbitMQ under stress"): a
#: quorum queue applies prefetch per consumer, one consumer per queue, so a multiplier of
#: 1 already holds 4 x WORKER_CONCURRENCY messages per process; and RabbitMQ 3.x counts
#: every return as a delivery (a restart, a lost connection, a consumer timeout returns
#: every message held, started or not), so the limit leaves room for those.
AMQP_DEFAULTS = {"worker_prefetch_multiplier": 1, "broker_delivery_limit": 20}
#: How soon RabbitMQ hands a dead worker process's jobs to another, as the lease counts it.
#: A process that dies closes its connection and RabbitMQ redelivers at once; only a host
#: that vanished without closing it waits for the heartbeat (`broker_heartbeat`, 30 s, in
#: brokers/amqp.py). The lease follows the first, as on Redis (BROKER_HEARTBEAT_TIMEOUT's
#: default): sized for the second, every crash would hold its keys for over 30 s.
AMQP_LIVENESS_SECONDS = 5.0
#: The most change-event partitions (EVENTS_PARTITIONS) a deployment may choose.
MAX_EVENT_PARTITIONS = 64


class WorkerSettings(RedisSection):
    """Each field is read from its upper-case environment name; the Redis ones come from
    the process's one Redis section (`redisconn.settings.get_redis_settings`)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # The worker always has a Redis: REDIS_URL cannot be empty here (Sentinel replaces it).
    redis_url: str = DEFAULT_REDIS_URL
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None

    worker_pool: Literal["threads", "prefork", "solo", "gevent", "eventlet"] = "threads"
    worker_concurrency: int = Field(DEFAULT_CONCURRENT_CALLS, ge=1, le=1000)
    # 1 on RabbitMQ (AMQP_DEFAULTS).
    worker_prefetch_multiplier: int = Field(2, ge=1, le=100)
    worker_max_memory_per_child_kb: int = Field(512_000, ge=0)

    # Freshness: a result younger than this is served from Redis without an upstream call.
    freshness_max_age: float = Field(300.0, ge=0)
    # Let a result's window follow the upstream's Cache-Control max-age instead, at most
    # FRESHNESS_UPSTREAM_MAX_AGE: off by default, so the window is the operator's.
    freshness_from_upstream: bool = False
    freshness_upstream_max_age: float = Field(3600.0, ge=0)
    # The single-flight lease of a key: renewed by its holder while it fetches, so a dead
    # holder delays the other jobs for that key by this much at most. Unset: the broker's
    # liveness timeout plus SINGLE_FLIGHT_TOLERATED_PAUSE_SECONDS (`lease_seconds`), so a
    # holder the broker still believes alive keeps its lease through such a pause.
    single_flight_lock_seconds: float | None = Field(None, ge=0.5, le=600)
    # The pause of Redis or of a worker (a stall, a failover) a lease outlives. Renewed
    # every third, a lease has two thirds of (liveness + pause) left when a pause begins:
    # more than the pause while the pause is at most twice the liveness.
    single_flight_tolerated_pause_seconds: float = Field(3.0, ge=0, le=300)
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
    # reject with requeue; on RabbitMQ also a closed connection or channel, on Redis the
    # visibility timeout), before it is parked in its queue's `.dead` queue (or list, on
    # Redis). 20 on RabbitMQ (AMQP_DEFAULTS).
    broker_delivery_limit: int = Field(5, ge=1, le=1000)
    # RabbitMQ only: the server's `consumer_timeout` in seconds (RabbitMQ's default is
    # 30 minutes). A delivery unacknowledged for longer closes the worker's channel, so it
    # must exceed what a job can take from delivery to acknowledgement.
    broker_consumer_timeout: int = Field(1800, ge=1)
    result_expires: int = Field(86_400, ge=60)

    events_stream_maxlen: int = Field(100_000, ge=100)
    # How many change-event streams (and partitions of each alias index) results are split
    # into (results/keys.py): 1 keeps the single `events:results`; a Redis Cluster needs more,
    # so that no master takes every event. Changing it is `apiworker migrate-keys`.
    events_partitions: int = Field(1, ge=1, le=MAX_EVENT_PARTITIONS)
    failures_stream_maxlen: int = Field(100_000, ge=100)
    # One failure record's size at most (its longest fields are cut past it).
    failure_record_max_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    # Failure records kept in the process while Redis cannot take them (then counted).
    failure_buffer_size: int = Field(1000, ge=0, le=100_000)
    # Where the results Redis has replicas, a write waits up to this long for one to
    # have it (`WAIT 1`), and the job is retried if none does; 0 never waits.
    result_replica_wait_ms: int = Field(1000, ge=0, le=60_000)
    # A removed result's tombstone (its fence, so that a late write is refused) expires
    # after this long.
    result_tombstone_seconds: int = Field(86_400, ge=60)

    beat_lock_timeout: int = Field(300, ge=10)

    # Prometheus metrics of this worker on http://0.0.0.0:METRICS_PORT/metrics; 0 turns
    # them off. Several workers on one host each need their own port.
    metrics_port: int = Field(9808, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("task_time_limit")
    @classmethod
    def _hard_above_soft(cls, value: float, info: ValidationInfo) -> float:
        soft = info.data.get("task_soft_time_limit")
        if soft is not None and value <= soft:
            raise ValueError("TASK_TIME_LIMIT must be greater than TASK_SOFT_TIME_LIMIT")
        return value

    @model_validator(mode="before")
    @classmethod
    def _rabbitmq_defaults(cls, data: object) -> object:
        """On RabbitMQ, AMQP_DEFAULTS replace the defaults an operator did not set."""
        if isinstance(data, dict):
            url = data.get("celery_broker_url")
            if isinstance(url, str) and url and broker_kind(url) == "amqp":
                return {**AMQP_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _partitions_fit_the_cluster(self) -> WorkerSettings:
        if self.redis_cluster_nodes and self.events_partitions < 2:
            raise ValueError(
                "REDIS_CLUSTER_NODES needs EVENTS_PARTITIONS of 2 or more (16 spreads them "
                "over 3 masters): with 1, every result's event goes to one master"
            )
        return self

    @model_validator(mode="after")
    def _broker_settings_fit_the_broker(self) -> WorkerSettings:
        if self.celery_broker_url is None and not broker_scheme_supported(self.broker_url):
            raise ValueError(
                "REDIS_URL: this Redis cannot also be the broker (kombu has no transport for "
                "its scheme); set CELERY_BROKER_URL to a redis://, rediss:// or amqp:// URL"
            )
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
            needed = self.task_time_limit * (1 + self.prefetched_per_thread)
            if self.broker_consumer_timeout <= needed:
                raise ValueError(
                    f"BROKER_CONSUMER_TIMEOUT ({self.broker_consumer_timeout}s) must exceed "
                    f"TASK_TIME_LIMIT x (1 + {len(ALL_QUEUES)} queues x "
                    f"WORKER_PREFETCH_MULTIPLIER) = {needed:g}s: a prefetched job may wait "
                    "behind that many others per thread before it runs; raise RabbitMQ's "
                    "consumer_timeout and this setting together"
                )
        return self

    @property
    def redis(self) -> RedisTarget:
        """The broker's, result backend's and beat's Redis by default: REDIS_URL, or the
        master the sentinels name. Also the results Redis, unless REDIS_CLUSTER_NODES."""
        target = self.resolve_redis()
        assert target is not None  # REDIS_URL is never empty here
        return target

    @property
    def state_redis(self) -> RedisTarget:
        """Where results, their events, leases and failure records live: the Redis
        Cluster of REDIS_CLUSTER_NODES, else the `redis` target."""
        return self.resolve_cluster() or self.redis

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
    def prefetched_per_thread(self) -> int:
        """Jobs a thread may have queued behind its running one on RabbitMQ: a quorum
        queue's prefetch (concurrency x multiplier) applies per consumer, and the worker
        has one consumer per queue."""
        return len(ALL_QUEUES) * self.worker_prefetch_multiplier

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
        scheme = redis_broker_scheme(self.celery_broker_url)
        if scheme is None:
            return None
        return RedisTarget.from_url(
            self.celery_broker_url, self.tls_files() if scheme == "rediss" else None
        )

    # The two URLs are worked out once: each builds Celery's whole connection settings,
    # and the settings are frozen. A job reads the broker's (through `lease_seconds`).
    @cached_property
    def broker_url(self) -> str:
        url: str = self.celery_connection.settings["broker_url"]
        return url

    @cached_property
    def result_backend(self) -> str:
        url: str = self.celery_connection.settings["result_backend"]
        return url

    @property
    def broker_liveness_seconds(self) -> float:
        """How long the broker goes on believing a silent worker process alive: the Redis
        transport's heartbeat timeout, or on RabbitMQ `AMQP_LIVENESS_SECONDS`."""
        if broker_kind(self.broker_url) == "redis":
            return self.broker_heartbeat_timeout
        return AMQP_LIVENESS_SECONDS

    @property
    def lease_seconds(self) -> float:
        """The single-flight lease: SINGLE_FLIGHT_LOCK_SECONDS, or the broker's liveness
        plus the tolerated pause."""
        if self.single_flight_lock_seconds is not None:
            return self.single_flight_lock_seconds
        return self.broker_liveness_seconds + self.single_flight_tolerated_pause_seconds

    @property
    def lease_renewal_timeout(self) -> float:
        """A renewal's socket timeout: a twelfth of the lease (renewals are due every
        third), between 0.1 and 2 s."""
        return min(2.0, max(0.1, self.lease_seconds / 12))

    @property
    def upstream_max_age(self) -> float | None:
        """The cap of an upstream-given freshness window; None when it is not followed."""
        return self.freshness_upstream_max_age if self.freshness_from_upstream else None
