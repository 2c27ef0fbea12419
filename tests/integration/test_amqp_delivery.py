"""The worker's delayed-delivery step (brokers/amqp_delivery.py) on the suite's own
RabbitMQ node: it really replaces Celery's, declares Celery's exchange names, leaves no
channel open, and sorts its errors as the consumer needs them sorted."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from amqp.exceptions import ConnectionForced
from celery import Celery
from celery.utils.imports import symbol_by_name
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.transport.native_delayed_delivery import CELERY_DELAYED_DELIVERY_EXCHANGE, level_name

from brokers import ALL_QUEUES
from brokers.amqp import JOBS_EXCHANGE, amqp_queue
from brokers.amqp_delivery import CELERY_STEP, STEP, ClusterDelayedDelivery
from tests.support.rabbitmq import RabbitServer, vhost_of
from worker.amqp_admission import STEP as ADMISSION
from worker.consumer import RecordingConsumer

#: Celery's names, as its producers address them (celery/app/base.py sends a countdown
#: to `celery_delayed_27`) and as kombu declares them.
DELAYED_EXCHANGES = {*(f"celery_delayed_{level}" for level in range(28)), "celery_delayed_delivery"}


def test_the_worker_consumer_runs_this_step_in_place_of_celerys() -> None:
    """Celery's step is still where the replacement expects it, and the worker's
    consumer blueprint has ours at its place and Celery's nowhere."""
    assert symbol_by_name(CELERY_STEP) is DelayedDelivery
    assert symbol_by_name(STEP) is ClusterDelayedDelivery
    celerys = list(RecordingConsumer.Blueprint.__mro__[1].default_steps)
    ours = list(RecordingConsumer.Blueprint.default_steps)
    assert CELERY_STEP in celerys
    assert CELERY_STEP not in ours
    # ... and, after Celery's, RabbitMQ's admission by the upstreams' budgets.
    assert ours == [*(STEP if step == CELERY_STEP else step for step in celerys), ADMISSION]


def test_kombus_names_are_the_ones_celery_publishes_to() -> None:
    """What the step declares (kombu's level names) is what Celery's producer sends a
    countdown to."""
    assert {level_name(level) for level in range(28)} | {
        CELERY_DELAYED_DELIVERY_EXCHANGE
    } == DELAYED_EXCHANGES
    source = symbol_by_name("celery.app.base").__file__
    with open(source, encoding="utf-8") as handle:
        assert "'celery_delayed_27'" in handle.read()


def app_for(url: str) -> Celery:
    app = Celery("delivery-test", broker=url, set_as_current=False)
    app.conf.update(
        task_queues=[amqp_queue(name) for name in ALL_QUEUES],
        broker_native_delayed_delivery_queue_type="quorum",
        task_default_queue_type="quorum",
    )
    return app


@pytest.fixture
def amqp_url(new_broker: Callable[[int], str]) -> str:
    return new_broker(3)


@pytest.fixture
def run_step() -> Iterator[Callable[[str], tuple[Any, set[int]]]]:
    """Run the step through a live connection to `url` once the queues are declared; the
    connection and its channel numbers open before the step."""
    made: list[Any] = []

    def run(url: str) -> tuple[Any, set[int]]:
        app = app_for(url)
        connection = app.connection_for_write()
        connection.ensure_connection(max_retries=1)
        made.append(connection)
        # What the consumer's Tasks step (which this step requires) has done before it.
        with connection.channel() as channel:
            for queue in app.amqp.queues.values():
                queue(channel).declare()
        before = set(connection.connection.channels)
        consumer = SimpleNamespace(app=app, connection=connection)
        ClusterDelayedDelivery(consumer).start(consumer)
        return connection, before

    yield run
    for connection in made:
        connection.release()


@pytest.mark.broker("amqp")
def test_the_step_declares_and_binds_on_one_channel_it_closes(
    amqp_url: str, rabbit_server: RabbitServer, run_step: Callable[[str], tuple[Any, set[int]]]
) -> None:
    """Celery's delayed-delivery exchanges exist, each queue is bound through the jobs
    exchange, and the connection has no more channels open than before the step."""
    connection, before = run_step(amqp_url)
    assert set(connection.connection.channels) == before
    vhost = quote(vhost_of(amqp_url), safe="")
    exchanges = {
        found["name"] for found in rabbit_server._management("get", f"exchanges/{vhost}").json()
    }
    assert exchanges >= DELAYED_EXCHANGES
    bindings = rabbit_server._management("get", f"bindings/{vhost}").json()
    routes = {(b["source"], b["destination"], b["routing_key"]) for b in bindings}
    assert (CELERY_DELAYED_DELIVERY_EXCHANGE, JOBS_EXCHANGE, "#.celery") in routes
    for name in ALL_QUEUES:
        assert (JOBS_EXCHANGE, name, f"#.{name}") in routes


@pytest.mark.broker("amqp")
def test_a_refused_declaration_is_logged_and_the_worker_consumes_on(
    amqp_url: str,
    rabbit_server: RabbitServer,
    run_step: Callable[[str], tuple[Any, set[int]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user without rights on the delayed-delivery exchanges (403 ACCESS_REFUSED):
    the step logs why and returns, its channels closed, the connection still usable
    (Celery's own step carries on the same way; this one used to crash the worker)."""
    vhost = vhost_of(amqp_url)
    user, password = f"{vhost}-nodelay", secrets.token_hex(8)
    rabbit_server._management("put", f"users/{quote(user, safe='')}",
                              json={"password": password, "tags": ""})  # fmt: skip
    rights = r"^(apiworker\..*|celery|pokeapi|cms|semaphore)$"
    rabbit_server._management(
        "put", f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
        json={"configure": rights, "write": rights, "read": rights},
    )  # fmt: skip
    parts = urlsplit(amqp_url)
    url = f"amqp://{quote(user, safe='')}:{password}@{parts.hostname}:{parts.port}{parts.path}"
    try:
        with caplog.at_level(logging.ERROR, logger="brokers.amqp_delivery"):
            connection, before = run_step(url)
        assert "ACCESS_REFUSED" in caplog.text, caplog.text
        assert "the worker consumes on" in caplog.text
        assert set(connection.connection.channels) == before
        channel = connection.channel()  # the connection itself is fine
        channel.close()
    finally:
        rabbit_server._management("delete", f"users/{quote(user, safe='')}")


class _Channel:
    """A channel on which declarations pass and the first binding meets the server's
    CONNECTION_FORCED (a node stopping in a rolling restart)."""

    def __init__(self) -> None:
        self.open = True

    def __getattr__(self, name: str) -> Any:
        if name == "exchange_bind":

            def refuse(*_: Any, **__: Any) -> None:
                raise ConnectionForced("CONNECTION_FORCED - shutdown")

            return refuse
        return lambda *_, **__: None

    def close(self) -> None:
        self.open = False


class _ForcedConnection:
    connection_errors = (ConnectionForced,)
    channel_errors = ()

    def __init__(self) -> None:
        self.channels: list[_Channel] = []

    def channel(self) -> _Channel:
        self.channels.append(_Channel())
        return self.channels[-1]


def test_a_connection_error_is_raised_as_itself_for_the_consumer_to_reconnect() -> None:
    """A connection error while binding is raised as itself, not in an ExceptionGroup
    (Celery's consumer reconnects on its connection errors, and only on them), and the
    step's one channel is closed."""
    app = app_for("amqp://guest:guest@127.0.0.1:1//")
    connection = _ForcedConnection()
    consumer = SimpleNamespace(app=app, connection=connection)
    with pytest.raises(ConnectionForced):
        ClusterDelayedDelivery(consumer).start(consumer)
    assert len(connection.channels) == 1
    assert not connection.channels[0].open
