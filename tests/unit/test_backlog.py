"""Scrape-time gauges: queue depths by LLEN, the failure stream's length, open circuits."""

from __future__ import annotations

import fakeredis
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from brokers.amqp import AmqpBroker
from brokers.redis import RedisBroker
from redisconn import RedisTarget
from telemetry.backlog import BacklogCollector
from worker.backlog import BrokerQueueDepths, queue_depth_reader

QUEUES = ("pokeapi", "celery")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def collector(client: redis.Redis, clock: Clock) -> BacklogCollector:
    return BacklogCollector(
        queues=QUEUES,
        depths=BrokerQueueDepths(
            RedisBroker(RedisTarget.from_url("redis://fake/0"), client=client)
        ),
        results=client,
        failures_key="events:failures",
        circuit_keys={"pokeapi": "circuit:{pokeapi}:open", "cms": "circuit:{cms}:open"},
        clock=clock,
    )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_gauges_read_queue_lists_failure_stream_and_open_circuits() -> None:
    """Three queued jobs, two failure records, one open circuit: the gauges say exactly so."""
    client = fakeredis.FakeRedis()
    client.rpush("pokeapi", "a", "b", "c")
    client.xadd("events:failures", {"task": "t"})
    client.xadd("events:failures", {"task": "t"})
    client.set("circuit:{pokeapi}:open", "1", px=30_000)
    registry = CollectorRegistry()
    registry.register(collector(client, Clock()))
    found = samples(registry)
    assert found[("apiworker_queue_depth", (("queue", "pokeapi"),))] == 3
    assert found[("apiworker_queue_depth", (("queue", "celery"),))] == 0
    assert found[("apiworker_failures_stream_length", ())] == 2
    assert found[("apiworker_circuit_open", (("service", "pokeapi"),))] == 1
    assert found[("apiworker_circuit_open", (("service", "cms"),))] == 0


def test_scrapes_within_the_cache_window_do_not_ask_redis_again() -> None:
    """A second scrape a second later serves the cached reading; past the window, a new one."""
    client = fakeredis.FakeRedis()
    clock = Clock()
    gauges = collector(client, clock)
    assert gauges.reading().depths["pokeapi"] == 0
    client.rpush("pokeapi", "a")
    clock.now += 1
    assert gauges.reading().depths["pokeapi"] == 0
    clock.now += gauges.cache_seconds
    assert gauges.reading().depths["pokeapi"] == 1


def test_an_unreachable_redis_leaves_the_gauges_out_instead_of_failing_the_scrape() -> None:
    """No Redis: the scrape succeeds with empty families."""
    client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    registry = CollectorRegistry()
    registry.register(collector(client, Clock()))
    assert samples(registry) == {}


def test_registration_does_not_read_redis() -> None:
    """describe() names the families without a round trip (a dead Redis cannot block start)."""
    client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    gauges = collector(client, Clock())
    names = {family.name for family in gauges.describe()}
    assert names == {
        "apiworker_queue_depth",
        "apiworker_failures_stream_length",
        "apiworker_circuit_open",
    }
    assert gauges._reading is None


def test_the_depth_reader_is_chosen_from_the_broker_url() -> None:
    """The broker's own module reads the depths (Redis: LLEN; RabbitMQ: a passive
    declare), as `apiworker queues` does; Sentinel URLs have none."""
    for url, kind in [
        ("redis://localhost:6379/1", RedisBroker),
        ("rediss://localhost:6380/1", RedisBroker),
        ("amqp://guest:guest@localhost:5672/v", AmqpBroker),
    ]:
        reader = queue_depth_reader(url)
        assert isinstance(reader, BrokerQueueDepths)
        assert isinstance(reader.broker, kind)
    assert queue_depth_reader("sentinel://localhost:26379") is None


def test_an_unreachable_rabbitmq_leaves_the_depths_out() -> None:
    """The broker away: the scrape still answers, without depth samples."""
    client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    gauges = BacklogCollector(
        queues=QUEUES,
        depths=BrokerQueueDepths(AmqpBroker("amqp://guest:guest@127.0.0.1:1//")),
        results=client,
        failures_key="events:failures",
        circuit_keys={},
    )
    assert gauges.reading().depths == {}
