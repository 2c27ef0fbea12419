"""The lean asyncio probe: what this machine allows for this job in Python.

One process, one event loop: `aiohttp` for HTTP (gzip inflated in C), `redis.asyncio`
(hiredis) for Redis, a msgspec decode of only the five fields the transform reads, the
project's own transform and a plain `SET pokemon:{name}`. Its queue is a plain Redis
list (`LPUSH probe:jobs NAME`, `BLPOP` here): a job popped is a job gone. No acks, no
retries, no results, no freshness, no single flight, no failure records, no logs or
metrics per job: none of the guarantees of the project, so its row is not a rival but
the floor under what any worker of this job can cost on this box.

Run: `python -m bench.baselines.probe`, with REDIS_URL, PROBE_QUEUE_URL and
POKEAPI_BASE_URL in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import aiohttp
import msgspec
import orjson
import redis.asyncio as aioredis

from bench.baselines.lean import decode_record
from tasks.pokemon_record import pokemon_summary

QUEUE = "probe:jobs"
# Jobs in flight: enough that 50 ms of upstream latency never idles the loop.
CONCURRENCY = 64


async def _consume(
    queue: aioredis.Redis, store: aioredis.Redis, http: aiohttp.ClientSession
) -> None:
    base = os.environ["POKEAPI_BASE_URL"]
    while True:
        # A short server-side wait: redis-py's client gives up on a silent socket after 5 s.
        popped = await queue.blpop([QUEUE], timeout=1)
        if popped is None:
            continue
        raw = popped[1]
        name = raw.decode() if isinstance(raw, bytes) else raw
        try:
            async with http.get(f"{base}/pokemon/{name}") as response:
                response.raise_for_status()
                body = await response.read()
            summary = pokemon_summary(msgspec.to_builtins(decode_record(body)))
            await store.set(f"pokemon:{summary['name']}", orjson.dumps(summary))
        except Exception as exc:  # any error drops the job, never the consumer
            # No retries and no failure records: the job is dropped, as the row says. An
            # error escaping here would end this consumer silently, and the probe would
            # run the next rounds with fewer jobs in flight.
            print(f"probe: {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    queue = aioredis.Redis.from_url(os.environ["PROBE_QUEUE_URL"])
    store = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    # A whole-request bound, not `sock_read`: aiohttp 3.14 re-arms the read timer of a
    # connection already back in the pool, and after ~10 s idle its next request fails at
    # once (aio-libs/aiohttp#12953), which dropped a few jobs in every round but the first.
    timeout = aiohttp.ClientTimeout(total=13.05, sock_connect=3.05)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        consumers = [asyncio.create_task(_consume(queue, store, http)) for _ in range(CONCURRENCY)]
        await stop.wait()
        for consumer in consumers:
            consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*consumers, return_exceptions=True)
    await queue.aclose()
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
