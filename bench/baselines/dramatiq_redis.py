"""The job as a Dramatiq user writes it: the strongest peer among Python job queues.

Dramatiq's Redis broker and its CLI defaults for this machine (one worker process per
core, 8 threads each, its default middleware: age and time limits, retries), one pooled
`requests.Session` per process, orjson, the project's own transform and a plain
`SET pokemon:{name}`. What it lacks is what the project adds on top of a queue: no
freshness check, no single flight, no failure records, no metadata or change events, no
result a caller can wait on, no per-job logs or metrics. Dramatiq acknowledges a message
after its actor returns, like the project's late acks.

Run: `dramatiq bench.baselines.dramatiq_redis`, with REDIS_URL, DRAMATIQ_BROKER_URL and
POKEAPI_BASE_URL in the environment. Actor `fetch_pokemon` on queue `default`.
"""

from __future__ import annotations

import os

import dramatiq
import orjson
import redis
import requests
from dramatiq.brokers.redis import RedisBroker
from requests.adapters import HTTPAdapter

from tasks.pokemon_record import pokemon_summary

BASE_URL = os.environ["POKEAPI_BASE_URL"]
ACTOR = "fetch_pokemon"
QUEUE = "default"
# Dramatiq's default `--threads`; the pools are sized for it.
THREADS = 8

broker = RedisBroker(url=os.environ["DRAMATIQ_BROKER_URL"])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
store = redis.Redis.from_url(os.environ["REDIS_URL"], max_connections=THREADS * 2)
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=THREADS))


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE)
def fetch_pokemon(name: str) -> None:
    response = session.get(f"{BASE_URL}/pokemon/{name}", timeout=(3.05, 10))
    response.raise_for_status()
    summary = pokemon_summary(orjson.loads(response.content))
    store.set(f"pokemon:{summary['name']}", orjson.dumps(summary))
