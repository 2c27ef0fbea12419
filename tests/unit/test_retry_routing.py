"""Retries and deferrals leave a delivery the way they should go back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from brokers.delivery import home_queue, own_headers

DELAYED = "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1."


@pytest.mark.parametrize(
    ("routing_key", "queue"),
    [
        ("pokeapi", "pokeapi"),
        ("celery", "celery"),
        (DELAYED + "cms", "cms"),  # after RabbitMQ's delayed delivery
        ("somewhere.else", None),  # not ours: Celery's own routing decides
        ("", None),
    ],
)
def test_a_retry_goes_back_to_the_queue_its_delivery_came_from(
    routing_key: str, queue: str | None
) -> None:
    """The queue is the routing key's last part when it names one of ours, else None."""
    request = SimpleNamespace(delivery_info={"exchange": "x", "routing_key": routing_key})
    assert home_queue(request) == queue


def test_a_deferral_drops_the_brokers_dead_letter_headers() -> None:
    """x-death and friends stay behind (RabbitMQ would drop the copy as a dead-letter
    cycle); the job's own headers go on."""
    request = SimpleNamespace(
        headers={
            "x-death": [{"queue": "celery_delayed_0", "reason": "expired"}],
            "x-delivery-count": 1,
            "apiworker_deferrals": 1,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        }
    )
    assert own_headers(request) == {
        "apiworker_deferrals": 1,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
