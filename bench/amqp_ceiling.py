# kombu ships no type information (pyproject.toml); its calls here are untyped.
# mypy: disable-error-code="no-untyped-call"
"""A Python client's ceiling on RabbitMQ: `python -m bench.amqp_ceiling --messages 20000`.

PerfTest (RabbitMQ's Java load tool) is not installable here; this is the closest
measurement with the worker's own client stack (kombu over py-amqp). A private node
(tests/support/rabbitmq.py `RabbitNode`), or with `--nodes 3` the failover scenario's
three-node cluster (tests/support/rabbit_cluster.py), and one durable quorum queue
(`x-queue-type: quorum`, three replicas on the cluster). Messages of `--size` bytes
(default 1,024: about a job's Celery message), persistent.

- publishers: `--publishers` processes, each on its own connection with publisher
  confirms (`confirm_publish`, as the stock producer sends: each publish waits for its
  confirm);
- consumers: `--consumers` processes, each on its own connection with `--prefetch`
  unacknowledged messages and one ack per message (as the worker acknowledges jobs).

Three phases: publish only (the queue fills), consume only (it drains), then both at
once. Each process is its own Python process, so the client's GIL is not shared; the
machine's two cores are shared by the node(s) and the clients, so the figures are the
ceiling of Python clients on this box, not the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer

from brokers.amqp import amqp_queue

QUEUE = "ceiling"


def queue() -> Queue:
    """The queue exactly as the worker declares its own (brokers/amqp.py)."""
    return amqp_queue(QUEUE)


def publish(url: str, count: int, size: int, start: Any, result: Any) -> None:
    body = b"x" * size
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), exchange=queue().exchange, routing_key=QUEUE)
        start.wait()
        began = time.perf_counter()
        for _ in range(count):
            producer.publish(body, delivery_mode=2, content_type="application/octet-stream")
        result.put(("publish", count, time.perf_counter() - began))


def consume(url: str, count: int, prefetch: int, start: Any, result: Any, total: Any) -> None:
    """Take and ack messages until the consumers together have `count`."""
    received = 0

    def on_message(_body: Any, message: Any) -> None:
        nonlocal received
        message.ack()
        received += 1
        with total.get_lock():
            total.value += 1

    with Connection(url) as conn:
        channel = conn.channel()
        channel.basic_qos(0, prefetch, False)
        with conn.Consumer(queue(), channel=channel, callbacks=[on_message], accept=None):
            start.wait()
            began = time.perf_counter()
            while total.value < count:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
            result.put(("consume", received, time.perf_counter() - began))


def run_phase(
    url: str, args: argparse.Namespace, publishers: int, consumers: int
) -> dict[str, float]:
    """Start the processes, release them at once; messages/s per kind (all its processes'
    messages over the slowest one's time)."""
    ctx = multiprocessing.get_context("spawn")
    start, result, total = ctx.Event(), ctx.Queue(), ctx.Value("q", 0)
    each = args.messages // max(publishers, 1)
    consumed = each * publishers if publishers else args.messages
    jobs: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
    jobs += [(publish, (url, each, args.size, start, result))] * publishers
    jobs += [(consume, (url, consumed, args.prefetch, start, result, total))] * consumers
    processes = [ctx.Process(target=target, args=params) for target, params in jobs]
    for process in processes:
        process.start()
    time.sleep(3.0)  # every process connected and waiting
    start.set()
    done: dict[str, int] = {}
    slowest: dict[str, float] = {}
    for _ in processes:
        kind, count, seconds = result.get(timeout=600)
        done[kind] = done.get(kind, 0) + count
        slowest[kind] = max(slowest.get(kind, 0.0), seconds)
    for process in processes:
        process.join(timeout=30)
    return {kind: done[kind] / slowest[kind] for kind in done}


@contextmanager
def broker(nodes: int) -> Iterator[str]:
    """The AMQP URL of a private node's default vhost, or of node 1 of a cluster."""
    from tests.support.rabbit_cluster import RabbitCluster
    from tests.support.rabbitmq import RabbitNode

    if nodes == 1:
        node = RabbitNode()
        try:
            yield node.start().url
        finally:
            node.cleanup()
        return
    cluster = RabbitCluster(nodes)
    try:
        yield cluster.start().nodes[0].url
    finally:
        cluster.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args()
    with broker(args.nodes) as url:
        with Connection(url) as conn:
            queue()(conn.channel()).declare()
        rows = [
            ("publish only", run_phase(url, args, args.publishers, 0)),
            ("consume only", run_phase(url, args, 0, args.consumers)),
            ("both at once", run_phase(url, args, args.publishers, args.consumers)),
        ]
    print(
        f"{args.messages} messages of {args.size} B, quorum queue on {args.nodes} node(s), "
        f"{args.publishers} publisher(s) with confirms, {args.consumers} consumer(s) with "
        f"prefetch {args.prefetch} and one ack per message\n"
    )
    print("| phase | published/s | consumed/s |\n|---|---|---|")
    for phase, rates in rows:
        published, consumed = rates.get("publish"), rates.get("consume")
        print(
            f"| {phase} | {'-' if published is None else f'{published:,.0f}'} | "
            f"{'-' if consumed is None else f'{consumed:,.0f}'} |"
        )


if __name__ == "__main__":
    main()
