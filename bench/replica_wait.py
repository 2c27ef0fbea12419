"""What `WAIT 1` after each result write costs: `python -m bench.replica_wait`.

Redis replicates asynchronously: a write the master acknowledged can vanish if the
master dies before its replica has it. `WAIT numreplicas timeout` after the write closes
that window (the job is acknowledged only once a replica holds its result), for the
replica's own delay. This measures both sides on loopback with the product's own write
(`ResultStore.write`): a master and one replica, writes without the wait
(RESULT_REPLICA_WAIT_MS=0: one script call) and with it (the default where a replica
exists: the script and `WAIT 1 1000` in one pipeline), interleaved in rounds so that
both see the same machine; sequentially (latency per write) and from 8 threads
(throughput).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import redis

from bench.harness import notifying_redis
from ops.processes.waits import wait_until
from results.keys import Keys
from results.store import Fetched, ResultStore

VALUE = {"id": 6, "name": "charizard", "image": "https://example.invalid/6.png", "height": "170 cm"}
WAIT_TIMEOUT_MS = 1000


def writer(store: ResultStore) -> Callable[[int], None]:
    """One result write as a job makes it; with the store's replica wait on, the write
    raises when no replica acknowledged it in time."""

    def write(index: int) -> None:
        store.write(Fetched("pokemon", f"p{index}", VALUE, time.time()), f"task-{index}")

    return write


def sequential(write: Callable[[int], None], writes: int) -> float:
    """Microseconds per write, one after the other."""
    started = time.perf_counter()
    for index in range(writes):
        write(index)
    return (time.perf_counter() - started) / writes * 1e6


def threaded(write: Callable[[int], None], writes: int, threads: int) -> float:
    """Writes per second from `threads` threads sharing one client pool."""
    per_thread = writes // threads

    def run(offset: int) -> None:
        for index in range(per_thread):
            write(offset * per_thread + index)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return per_thread * threads / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="writes per round and mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    master, replica = notifying_redis().start(), notifying_redis().start()
    try:
        follower = redis.Redis.from_url(replica.url)
        follower.replicaof("127.0.0.1", master.port)
        wait_until(
            lambda: follower.info("replication").get("master_link_status") == "up",
            timeout=10,
            what="replica in sync",
        )
        client = redis.Redis.from_url(master.url, max_connections=args.threads * 2)
        plain = writer(ResultStore(client, Keys(), events_maxlen=100_000, failures_maxlen=1000))
        waiting_store = ResultStore(
            client, Keys(), events_maxlen=100_000, failures_maxlen=1000,
            replica_wait_ms=WAIT_TIMEOUT_MS,
        )  # fmt: skip
        assert waiting_store.replicas.needed(), "the master sees no replica"
        waiting = writer(waiting_store)
        names = ("us", "us_wait", "rps", "rps_wait")
        figures: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            figures["us"].append(sequential(plain, args.writes))
            figures["us_wait"].append(sequential(waiting, args.writes))
            figures["rps"].append(threaded(plain, args.writes, args.threads))
            figures["rps_wait"].append(threaded(waiting, args.writes, args.threads))
        median = {name: statistics.median(values) for name, values in figures.items()}
        print(f"result writes, median of {args.rounds} rounds of {args.writes} (one replica):")
        print(
            f"  sequential: {median['us']:.0f} us/write, with WAIT 1: {median['us_wait']:.0f} "
            f"us/write (x{median['us_wait'] / median['us']:.2f})"
        )
        print(
            f"  {args.threads} threads: {median['rps']:.0f} writes/s, with WAIT 1: "
            f"{median['rps_wait']:.0f} writes/s (x{median['rps_wait'] / median['rps']:.2f})"
        )
        client.close()
        follower.close()
    finally:
        master.cleanup()
        replica.cleanup()


if __name__ == "__main__":
    main()
