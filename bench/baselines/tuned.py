"""The worker a careful engineer writes in an afternoon: the yardstick for the API layer.

Threads pool with as many threads as the project (16), one pooled `requests.Session`
shared by them, orjson, the project's own transform and a plain `SET pokemon:{name}`.
What it lacks on purpose is every guarantee the project adds: no freshness check, no
single flight, no retries, no failure records, no metadata or change events, no
response-size or total-deadline checks, no per-job logs or metrics.

Run: `celery -A bench.baselines.tuned worker`, with REDIS_URL, CELERY_BROKER_URL,
CELERY_RESULT_BACKEND and POKEAPI_BASE_URL in the environment.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import redis
import requests
from celery import Celery
from requests.adapters import HTTPAdapter

from tasks.pokemon_record import PokemonSummary, pokemon_summary

BASE_URL = os.environ["POKEAPI_BASE_URL"]
THREADS = 16

app = Celery(
    "tuned",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
)
app.conf.update(
    worker_pool="threads",
    worker_concurrency=THREADS,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_pool_limit=THREADS,
)
store = redis.Redis.from_url(os.environ["REDIS_URL"], max_connections=THREADS * 2)
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=THREADS))


@app.task(name="tasks.pokemon.fetch_pokemon")  # type: ignore[untyped-decorator]
def fetch_pokemon(name: str) -> PokemonSummary:
    response = session.get(f"{BASE_URL}/pokemon/{name}", timeout=(3.05, 10))
    response.raise_for_status()
    summary = pokemon_summary(orjson.loads(response.content))
    store.set(f"pokemon:{summary['name']}", orjson.dumps(summary))
    return summary


@app.task(name="tasks.pokemon.refresh_catalog")  # type: ignore[untyped-decorator]
def refresh_catalog() -> dict[str, Any]:
    """One job per name of the index (or of POKEMON_CATALOG), sent over one connection."""
    names = _catalog()
    with app.producer_or_acquire() as producer:
        for name in names:
            fetch_pokemon.apply_async((name,), producer=producer)
    return {"enqueued": len(names)}


def _catalog() -> list[str]:
    listed = os.environ.get("POKEMON_CATALOG", "*")
    if listed != "*":
        return [name.strip() for name in listed.split(",") if name.strip()]
    names: list[str] = []
    url: str | None = f"{BASE_URL}/pokemon?limit=500"
    while url:
        page = orjson.loads(session.get(url, timeout=(3.05, 10)).content)
        names += [entry["name"] for entry in page["results"]]
        url = page["next"]
    return names
