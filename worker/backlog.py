"""The worker's backlog gauges (telemetry/backlog.py), wired to its broker and Redis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.registry import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisconn
from apis.breaker import state_keys
from brokers import DEFAULT_QUEUE, QUEUES, Broker, open_broker, reads_queue_depths
from results.keys import Keys
from settings import get_settings
from telemetry.backlog import BacklogCollector, QueueDepthReader
from upstreams import all_upstreams


@dataclass(frozen=True)
class BrokerQueueDepths:
    """The ready count of each queue, as the broker's own module reads it (the same
    reading `apiworker queues` shows)."""

    broker: Broker

    def __call__(self, queues: Sequence[str]) -> Mapping[str, int]:
        return {depth.name: depth.ready for depth in self.broker.depths(queues)}


def queue_depth_reader(broker_url: str, key_prefix: str = "") -> QueueDepthReader | None:
    """The reader for this broker, or None when there is none (Sentinel URLs: the
    master is found by the worker's transport, not by a scrape)."""
    if not reads_queue_depths(broker_url):
        return None
    return BrokerQueueDepths(open_broker(broker_url, redis_key_prefix=key_prefix))


def register(registry: CollectorRegistry, app: Any) -> BacklogCollector:
    """Build the collector from the worker's settings and `app`'s broker options, and add
    it to `registry`."""
    settings = get_settings().worker
    prefix = settings.result_key_prefix
    collector = BacklogCollector(
        queues=(*QUEUES, DEFAULT_QUEUE),
        depths=queue_depth_reader(
            settings.broker_url,
            app.conf.broker_transport_options.get("global_keyprefix", ""),
        ),
        # The results Redis as every other user reaches it (Sentinel, TLS): redisconn.
        results=redisconn.client(
            settings.state_redis,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        ),
        failures_key=Keys(prefix).failures,
        circuit_keys={
            upstream.name: state_keys(prefix, upstream.name)[0]
            for upstream in all_upstreams()
            if upstream.breaker
        },
    )
    registry.register(collector)
    return collector
