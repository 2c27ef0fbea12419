"""The Celery app: `celery -A worker worker|beat|flower` finds it from the repository root.

Every setting below is chosen on purpose; each says why, with a link to Celery's docs
(https://docs.celeryq.dev/en/stable/userguide/configuration.html, "CFG" below).
"""

from __future__ import annotations

# Before Celery: redis-py, kombu and tenacity without the optional packages a worker never
# uses (worker/optional_imports.py).
import worker.optional_imports  # isort: skip

# Celery's retries and failures share each function's code positions in their traceback
# copies (worker/exception_info.py).
import worker.exception_info  # isort: skip

import sys

from celery import Celery

from brokers import DEFAULT_QUEUE, QUEUES, broker_module, failover_order, redis_transport
from settings import ConfigurationError, checked_settings
from settings.errors import USAGE_EXIT_CODE
from tasks.messages import SENDER_CONF, TASK_MODULES
from telemetry import otel
from telemetry.redact import register_secret, url_passwords
from worker import admission, flower_search, result_backend, result_repr
from worker.beat import beat_schedule

__all__ = ["DEFAULT_QUEUE", "QUEUES", "app", "broker"]

try:
    # Validate the whole settings tree (settings/: Redis, the API layer, the worker)
    # before taking a job: one line per bad variable, and exit 2, a usage error.
    checked = checked_settings()
    settings = checked.worker
except ConfigurationError as exc:
    sys.stderr.write("".join(f"error: {line}\n" for line in exc.lines))
    raise SystemExit(USAGE_EXIT_CODE) from None

# Traces asked for by OTEL_* variables need the tracing extra: say so now, not at a job.
otel.check_installed()

broker = broker_module(settings.broker_url)
broker_conf = broker.celery_conf(settings)
# A Redis broker takes messages with the reliable fetch (brokers/redis_transport.py); a
# job it parks leaves a failure record (worker/consumer.py). On RabbitMQ, kombu's aliases
# stay as they are.
if broker.KIND == "redis":
    redis_transport.install()
# ... and leaves an upstream's jobs in the broker while its budget is held.
admission.install()
# Redis and broker passwords (every URL of a failover list) are masked in every log line,
# as upstream tokens are.
for secret in (
    *settings.redis.secrets(),
    *settings.state_redis.secrets(),  # a Redis Cluster's (REDIS_PASSWORD)
    *url_passwords(settings.broker_url),
):
    register_secret(secret)
# Where the broker, the result backend and beat's schedule live: the results Redis
# (REDIS_URL, or the master the sentinels name) unless CELERY_BROKER_URL /
# CELERY_RESULT_BACKEND say otherwise; with Sentinel, the master's name and the
# sentinels' credentials join the transport options. See redisconn/celery_config.py.
connection = settings.celery_connection
transport_options = {
    "broker_transport_options": {
        **broker_conf.get("broker_transport_options", {}),
        **connection.broker_transport_options,
    },
    "result_backend_transport_options": {
        **broker_conf.get("result_backend_transport_options", {}),
        **connection.backend_transport_options,
    },
}

# The task modules of every upstream in the registry (upstreams/).
app = Celery("worker", include=list(TASK_MODULES))
# Each result stored in one Redis round trip, Celery's key, value and message unchanged.
app.backend_cls = result_backend.backend_class(settings.result_backend)
# On RabbitMQ every publish waits a bounded time for its confirm (brokers/amqp.py).
app.amqp_cls = getattr(broker, "AMQP_CLASS", app.amqp_cls)
app.conf.update(
    **connection.settings,
    # JSON only, the routes and the default queue: what every sender shares with the
    # worker (tasks/messages.py). CFG#accept-content, CFG#task-routes
    **SENDER_CONF,
    # Every task here is an idempotent fetch-and-store: acknowledge after the work, and
    # requeue if the worker process dies mid-job, so a killed worker's jobs run again.
    # CFG#task-acks-late, CFG#task-reject-on-worker-lost
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # A result the backend cannot store (Redis restarting, a failover under way) is
    # retried with backoff rather than turning a finished job into a failure: the job's
    # own result is already in the results keys. CFG#result-backend-always-retry
    result_backend_always_retry=True,
    # One backend (and one connection pool) for the process, not one per thread: each
    # new thread built its own backend and connected again, costs that landed on the
    # jobs that first met a new thread. Celery's Redis backend is safe to share: every
    # call takes a connection from redis-py's pool. CFG#result-backend-thread-safe
    result_backend_thread_safe=True,
    result_backend_max_retries=20,
    result_backend_max_sleep_between_retries_ms=2000,
    # Above the client's worst case (attempts x timeouts + backoff), so a limit only
    # fires on a genuine hang. CFG#task-soft-time-limit, CFG#task-time-limit
    task_soft_time_limit=settings.task_soft_time_limit,
    task_time_limit=settings.task_time_limit,
    # I/O-bound jobs: a few messages in hand per thread keep threads busy without
    # hoarding work a second worker could take. On RabbitMQ it applies per queue (1 by
    # default there: settings/worker.py). CFG#worker-prefetch-multiplier
    worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
    worker_pool=settings.worker_pool,
    worker_concurrency=settings.worker_concurrency,
    # The prefork pool recycles a child that grows past this; a leak cannot take the
    # host down. CFG#worker-max-memory-per-child
    worker_max_memory_per_child=settings.worker_max_memory_per_child_kb or None,
    # Results are also in the documented Redis keys; the backend copy is for callers
    # waiting on one job, so it expires. CFG#result-expires
    result_expires=settings.result_expires,
    # On a lost broker connection, unacknowledged jobs are redelivered anyway; cancel
    # them rather than run them twice, where the pool can stop a running job (prefork,
    # gevent, eventlet). The threads pool cannot (a thread cannot be killed: Celery logs
    # a NotImplementedError traceback per job and the job runs on), so there the job
    # finishes and its late ack fails with the dead connection; jobs it had not started
    # are cancelled (worker/pending_jobs.py), and on RabbitMQ the redelivery of one that
    # succeeded is not run again (brokers/amqp.py).
    # CFG#worker-cancel-long-running-tasks-on-connection-loss
    worker_cancel_long_running_tasks_on_connection_loss=settings.worker_pool
    in ("prefork", "gevent", "eventlet"),
    # Wait for Redis at start instead of crashing (Celery 6 changes the default).
    # CFG#broker-connection-retry-on-startup
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # The queues themselves (and the transport options) depend on the broker: see
    # brokers/. CFG#task-queues
    worker_hijack_root_logger=False,
    # Beat: celery-redbeat keeps the schedule in Redis behind a lock, so a second beat
    # instance waits instead of double-scheduling. https://redbeat.readthedocs.io/
    # Its Redis (redbeat_redis_url and options) comes with the connection settings above;
    # the subclass keeps beat running through a Redis restart or failover.
    beat_scheduler="worker.beat_scheduler:FailoverTolerantScheduler",
    redbeat_key_prefix=f"{settings.result_key_prefix}redbeat",
    redbeat_lock_timeout=settings.beat_lock_timeout,
    beat_max_loop_interval=5,
    beat_schedule=beat_schedule(checked.api),
    task_send_sent_event=False,
    # No task declares Celery's per-worker `rate_limit`: the upstream budget
    # (apis/budget.py) paces calls for the whole fleet, so the consumer skips the
    # token-bucket lookup on every message. CFG#worker-disable-rate-limits
    worker_disable_rate_limits=True,
    broker_pool_limit=max(10, settings.worker_concurrency),
    # Undecodable messages and unknown task names leave a failure record (and, on
    # RabbitMQ, are dead-lettered) instead of vanishing with a log line.
    worker_consumer="worker.consumer:RecordingConsumer",
    **{**broker_conf, **transport_options},
)
# Each worker tries the nodes of a RabbitMQ failover list in its own order, so
# connections and the leaders of the queues they declare spread over the cluster.
app.conf.broker_url = failover_order(app.conf.broker_url)

# The text of each job's return value, made by Celery's tracer on every success.
result_repr.install()
# In Flower's process (`celery -A worker flower`), its search index parses each job's
# kwargs text once, not at every event.
flower_search.install()

# Signal handlers: logging, job outcome lines, metrics, process tuning. Imported for
# their side effect.
import worker.observability  # noqa: E402
import worker.shutdown  # noqa: E402
import worker.tuning  # noqa: E402, F401
