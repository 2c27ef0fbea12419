"""The lean threaded probe: the floor of a thread-per-job worker of this job in Python.

The asyncio probe's job (`bench.baselines.probe`) on the project's execution model: one
process per core, 32 threads each, every thread blocking on its job's I/O with the
project's synchronous clients (urllib3 with connect and read timeouts, redis-py with
hiredis and socket timeouts), the same msgspec decode of five fields, the project's
transform and a plain `SET pokemon:{name}`. Its queue is the same plain Redis list
(`BLPOP`): no acks, no retries, no results, no freshness, no single flight, no failure
records, no logs or metrics per job. Its row against the asyncio probe's is what blocking
threads cost on this box before any guarantee; against the project's, what the
guarantees and Celery cost on top.

Run: `python -m bench.baselines.probe_threads`, with REDIS_URL, PROBE_QUEUE_URL and
POKEAPI_BASE_URL in the environment.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import msgspec
import orjson
import redis
import urllib3

from bench.baselines.lean import decode_record, run_per_core
from tasks.pokemon_record import PokemonSummary, pokemon_summary

QUEUE = "probe:jobs"
# The project's default pool size (apis.config.DEFAULT_CONCURRENT_CALLS), in each process
# of a core. Not imported: apis.config loads the project's settings and pydantic, which
# would be counted in the floors' memory (tests/unit/test_bench_floors.py holds it equal).
THREADS = 32


# The project's connect and read timeouts (apis/config.py's defaults; literals for the
# reason above, held equal by the same test).
TIMEOUT = urllib3.Timeout(connect=3.05, read=10.0)


def fetch_and_store(
    http: urllib3.PoolManager, store: redis.Redis, base_url: str, name: str
) -> PokemonSummary:
    """The lean job, which both threaded floors run: one GET, five fields, one SET."""
    response = http.request("GET", f"{base_url}/pokemon/{name}", timeout=TIMEOUT, retries=False)
    if response.status != 200:
        raise ValueError(f"HTTP {response.status}")
    summary = pokemon_summary(msgspec.to_builtins(decode_record(response.data)))
    store.set(f"pokemon:{summary['name']}", orjson.dumps(summary))
    return summary


def _consume(
    queue: redis.Redis, store: redis.Redis, http: urllib3.PoolManager, stop: threading.Event
) -> None:
    base = os.environ["POKEAPI_BASE_URL"]
    while not stop.is_set():
        popped = queue.blpop([QUEUE], timeout=1)
        if popped is None:
            continue
        raw = popped[1]
        name = raw.decode() if isinstance(raw, bytes) else raw
        try:
            fetch_and_store(http, store, base, name)
        except Exception as exc:  # any error drops the job, never the thread
            print(f"probe-threads: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _process() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pool = redis.ConnectionPool.from_url(
        os.environ["PROBE_QUEUE_URL"], max_connections=THREADS, socket_timeout=5
    )
    queue = redis.Redis(connection_pool=pool)
    store = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
    http = urllib3.PoolManager(maxsize=THREADS, block=False)
    threads = [
        threading.Thread(target=_consume, args=(queue, store, http, stop), daemon=True)
        for _ in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=3)


def main() -> None:
    run_per_core(_process)


if __name__ == "__main__":
    main()
