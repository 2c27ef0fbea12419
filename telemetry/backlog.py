"""Gauges read from Redis when Prometheus scrapes: queue depths, the failure stream, circuits.

What the alert rules need and no counter can say: how many jobs wait in each queue
(`apiworker_queue_depth`), how many failure records wait in `events:failures`
(`apiworker_failures_stream_length`) and which upstream circuits are open
(`apiworker_circuit_open`). Nothing here runs on the job path: a scrape reads everything
in one pipelined round trip per Redis, at most once per `CACHE_SECONDS` (answers in
between are served from the last reading), and a Redis that does not answer leaves the
gauges out of that scrape instead of failing it.

Queue depth depends on the broker, so the collector is handed a reader: the worker's
(worker/backlog.py) reads it through the broker's own module, as `apiworker queues` reads
it: on Redis a queue's LLEN, on RabbitMQ a passive declare's ready count. A broker URL
without a reader (Sentinel) has no depth gauge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("worker.backlog")

CACHE_SECONDS = 5.0


class QueueDepthReader(Protocol):
    """Jobs waiting in each of `queues`, as the broker counts them."""

    def __call__(self, queues: Sequence[str]) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class Reading:
    depths: Mapping[str, int]
    failures: int | None
    circuits: Mapping[str, bool]


class BacklogCollector(Collector):
    """A Prometheus collector computing the gauges on scrape, cached for a few seconds."""

    def __init__(
        self,
        *,
        queues: Sequence[str],
        depths: QueueDepthReader | None,
        results: redis.Redis,
        failures_key: str,
        circuit_keys: Mapping[str, str],
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queues = tuple(queues)
        self.depths = depths
        self.results = results
        self.failures_key = failures_key
        self.circuit_keys = dict(circuit_keys)
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: Reading | None = None
        self._read_at = float("-inf")

    def describe(self) -> Iterable[Metric]:
        """The families without reading Redis (registration must not block on it)."""
        return list(self._families(Reading({}, None, {})))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.reading()))

    def reading(self) -> Reading:
        with self._lock:
            if self._reading is None or self._clock() - self._read_at >= self.cache_seconds:
                self._reading = self._read()
                self._read_at = self._clock()
            return self._reading

    def _read(self) -> Reading:
        depths: Mapping[str, int] = {}
        if self.depths is not None:
            try:
                depths = self.depths(self.queues)
            except Exception as exc:  # the broker is away: no depth in this scrape
                log.warning("queue depths not read: %s", type(exc).__name__)
        failures: int | None = None
        circuits: dict[str, bool] = {}
        try:
            pipe = self.results.pipeline(transaction=False)
            pipe.xlen(self.failures_key)
            services = list(self.circuit_keys)
            for service in services:
                pipe.exists(self.circuit_keys[service])
            length, *open_flags = pipe.execute()
            failures = int(length)
            circuits = {s: bool(flag) for s, flag in zip(services, open_flags, strict=True)}
        except redis.RedisError as exc:
            log.warning("failure stream and circuits not read: %s", type(exc).__name__)
        return Reading(depths, failures, circuits)

    def _families(self, reading: Reading) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "apiworker_queue_depth", "Jobs waiting in each broker queue.", labels=["queue"]
        )
        for queue, count in reading.depths.items():
            depth.add_metric([queue], count)
        yield depth
        failures = GaugeMetricFamily(
            "apiworker_failures_stream_length",
            "Failure records in the failure stream (replayed ones leave it).",
        )
        if reading.failures is not None:
            failures.add_metric([], reading.failures)
        yield failures
        circuits = GaugeMetricFamily(
            "apiworker_circuit_open",
            "1 while an upstream's circuit breaker is open (calls refused), else 0.",
            labels=["service"],
        )
        for service, is_open in reading.circuits.items():
            circuits.add_metric([service], 1 if is_open else 0)
        yield circuits
