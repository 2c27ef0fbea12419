"""The Dramatiq baseline with Dramatiq's own `WindowRateLimiter`, as its docs show it.

A limiter shared through Redis (`dramatiq.rate_limits.backends.RedisBackend`) of
BENCH_RATE calls per one-second window around the fetch; a call over the limit raises
`RateLimitExceeded` at once (`raise_on_failure`), and a 429 raises too: Dramatiq's
Retries middleware sends the message again with its backoff. It knows nothing of the
upstream's answers.

Run: `dramatiq bench.baselines.dramatiq_rate_limit`, with REDIS_URL,
DRAMATIQ_BROKER_URL, POKEAPI_BASE_URL and BENCH_RATE in the environment.
"""

from __future__ import annotations

import os

import dramatiq
import orjson
import redis
import requests
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits import WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend
from requests.adapters import HTTPAdapter

from tasks.pokemon_record import pokemon_summary

BASE_URL = os.environ["POKEAPI_BASE_URL"]
RATE = int(float(os.environ.get("BENCH_RATE", "40")))
THREADS = 8

broker = RedisBroker(url=os.environ["DRAMATIQ_BROKER_URL"])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
limiter = WindowRateLimiter(  # type: ignore[no-untyped-call]
    RedisBackend(client=redis.Redis.from_url(os.environ["DRAMATIQ_BROKER_URL"])),
    "pokeapi",
    limit=RATE,
    window=1,
)
store = redis.Redis.from_url(os.environ["REDIS_URL"], max_connections=THREADS * 2)
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=THREADS))


@dramatiq.actor(actor_name="fetch_pokemon", queue_name="default")
def fetch_pokemon(name: str) -> None:
    with limiter.acquire():
        response = session.get(f"{BASE_URL}/pokemon/{name}", timeout=(3.05, 10))
    response.raise_for_status()
    summary = pokemon_summary(orjson.loads(response.content))
    store.set(f"pokemon:{summary['name']}", orjson.dumps(summary))
