"""What an idle worker costs its Redis broker: `python -m bench.idle_cost --seconds 20`.

A private redis-server as the broker (results and result backend on another), one real
worker (`python -m worker`, defaults otherwise) that has served one job and then waits.
Over `--seconds`, from `INFO commandstats` and `INFO persistence`: commands sent per
second, write commands run per second (inside scripts too), and keys changed per second
(`rdb_changes_since_last_save`: what reaches the append-only file and the replicas).
Prints one Markdown row.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import redis

from ops.processes.redis_server import DisposableRedis
from ops.processes.waits import wait_until
from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from sandbox.server import SandboxServer

FETCH = "tasks.pokemon.fetch_pokemon"
#: The write commands the reliable fetch's scripts and kombu could run while idle.
WRITES = ("zadd", "incr", "hset", "hdel", "rpush", "lpush", "del", "zrem", "hincrby")


def counters(client: redis.Redis) -> tuple[dict[str, int], int]:
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return calls, int(client.info("persistence")["rdb_changes_since_last_save"])


def measure(seconds: float, concurrency: int) -> str:
    with ExitStack() as stack:
        broker = DisposableRedis(prefix="apiworker-idle-broker-").start()
        stack.callback(broker.cleanup)
        other = DisposableRedis(prefix="apiworker-idle-other-").start()
        stack.callback(other.cleanup)
        sandbox = SandboxServer(prewarm=False).start()
        stack.callback(sandbox.stop)
        env = {
            "REDIS_URL": other.url_for(0),
            "CELERY_BROKER_URL": broker.url_for(0),
            "CELERY_RESULT_BACKEND": other.url_for(1),
            "POKEAPI_BASE_URL": sandbox.pokeapi_url,
            "CMS_BASE_URL": sandbox.cms_url,
            "SEMAPHORE_BASE_URL": sandbox.semaphore_url,
            "SEMAPHORE_API_TOKEN": sandbox.semaphore_token,
            "METRICS_PORT": "0",
            "TEST_WORKER_LOGLEVEL": "WARNING",
        }
        producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
        stack.callback(producer.close)
        worker = WorkerProcess(env, concurrency=concurrency)
        stack.callback(worker.stop)
        worker.start(producer, timeout=90)
        producer.send_task(FETCH, args=["pikachu"]).get(timeout=30)
        time.sleep(2.0)  # the job's acks and the backend's writes settle
        client = broker.client()
        stack.callback(client.close)
        calls_before, changes_before = counters(client)
        started = time.monotonic()
        time.sleep(seconds)
        calls_after, changes_after = counters(client)
        elapsed = time.monotonic() - started
        wait_until(lambda: worker.alive, timeout=1, what="the worker still running")

    deltas = {
        name: calls_after.get(name, 0) - calls_before.get(name, 0)
        for name in set(calls_after) | set(calls_before)
        if name != "info"  # this measurement's own
    }
    writes = sum(deltas.get(name, 0) for name in WRITES)
    per_command = ", ".join(
        f"{name} {count / elapsed:.1f}" for name, count in sorted(deltas.items()) if count
    )
    return (
        "| commands run/s (scripts' own included) | write commands run/s | keys changed/s "
        "| per command /s |\n|---|---|---|---|\n"
        f"| {sum(deltas.values()) / elapsed:.1f} | {writes / elapsed:.2f} "
        f"| {(changes_after - changes_before) / elapsed:.2f} | {per_command} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time measured")
    parser.add_argument("--concurrency", type=int, default=8, help="the worker's threads")
    args = parser.parse_args()
    print(measure(args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
