"""The worker a Celery tutorial leads to: the yardstick for "what you get for free".

Prefork pool with its defaults (one process per core), `requests.get` per call (a new
connection every time), the stdlib `json`, the project's own transform so the work is
the same, and a plain `SET pokemon:{name}`. No freshness, no single flight, no retries,
no failure records. The timeout is there because every tutorial that survives review
has one; without it a hung upstream would stall a process forever.

Run: `celery -A bench.baselines.tutorial worker --loglevel=INFO`, with REDIS_URL,
CELERY_BROKER_URL, CELERY_RESULT_BACKEND and POKEAPI_BASE_URL in the environment.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
import requests
from celery import Celery

from tasks.pokemon_record import PokemonSummary, pokemon_summary

BASE_URL = os.environ["POKEAPI_BASE_URL"]

app = Celery(
    "tutorial",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
)
app.conf.broker_connection_retry_on_startup = True
store = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="tasks.pokemon.fetch_pokemon")  # type: ignore[untyped-decorator]
def fetch_pokemon(name: str) -> PokemonSummary:
    response = requests.get(f"{BASE_URL}/pokemon/{name}", timeout=10)
    response.raise_for_status()
    summary = pokemon_summary(json.loads(response.content))
    store.set(f"pokemon:{summary['name']}", json.dumps(summary))
    return summary


@app.task(name="tasks.pokemon.refresh_catalog")  # type: ignore[untyped-decorator]
def refresh_catalog() -> dict[str, Any]:
    """One job per name of the index (or of POKEMON_CATALOG when it lists names)."""
    names = _catalog()
    for name in names:
        fetch_pokemon.delay(name)
    return {"enqueued": len(names)}


def _catalog() -> list[str]:
    listed = os.environ.get("POKEMON_CATALOG", "*")
    if listed != "*":
        return [name.strip() for name in listed.split(",") if name.strip()]
    names: list[str] = []
    url: str | None = f"{BASE_URL}/pokemon?limit=500"
    while url:
        page = requests.get(url, timeout=10).json()
        names += [entry["name"] for entry in page["results"]]
        url = page["next"]
    return names
