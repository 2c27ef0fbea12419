"""The worker's /metrics carries the gauges the alert rules read: queues, failures, circuits."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
import requests
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.support.celery_worker import wait_for
from worker.backlog import queue_depth_reader


def scrape(worker_env: dict[str, str]) -> str:
    url = f"http://127.0.0.1:{worker_env['METRICS_PORT']}/metrics"
    return requests.get(url, timeout=5).text


def gauge(body: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_metrics_show_queue_depths_failure_stream_length_and_circuits(
    producer: Celery, results: redis.Redis, worker_env: dict[str, str], sandbox: Any
) -> None:
    """Every queue has a depth, the stream length follows XLEN, each circuit reads closed."""
    job = producer.send_task("tasks.pokemon.fetch_pokemon", args=["missingno"])
    job.get(timeout=30, propagate=False)
    recorded = wait_for(lambda: results.xlen("events:failures"), timeout=10, what="a record")
    body = wait_for(
        lambda: (
            (text := scrape(worker_env))
            and gauge(text, "apiworker_failures_stream_length") == recorded
            and text
        ),
        timeout=15,
        what="the gauge to follow the stream",
    )
    for queue in ("pokeapi", "cms", "semaphore", "celery"):
        assert gauge(body, "apiworker_queue_depth", f'{{queue="{queue}"}}') is not None
    for service in ("pokeapi", "cms", "semaphore"):
        assert gauge(body, "apiworker_circuit_open", f'{{service="{service}"}}') == 0


@pytest.mark.broker("amqp")
def test_rabbitmq_queue_depth_is_its_ready_message_count(broker_kind: str, new_broker) -> None:
    """Three messages published to a queue read as 3; a queue never declared reads as 0."""
    url = new_broker(0)
    with Connection(url) as connection:
        queue = Queue("pokeapi", Exchange("pokeapi", type="direct"), routing_key="pokeapi")
        producer = connection.Producer()
        for number in range(3):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key="pokeapi",
                             declare=[queue], serializer="json")  # fmt: skip
    reader = queue_depth_reader(url)
    assert reader is not None
    assert reader(["pokeapi", "cms"]) == {"pokeapi": 3, "cms": 0}
