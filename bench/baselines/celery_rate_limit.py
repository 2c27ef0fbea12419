"""The tutorial worker with Celery's own per-task `rate_limit`, as its users write it.

`@app.task(rate_limit="40/s")` plus the retry Celery's task guide shows for a flaky HTTP
call (`autoretry_for`, `retry_backoff`): a 429 raises and the job is retried later. The
limit is per worker instance (Celery's consumer spaces the task's messages out), not
shared by the fleet, and it knows nothing of the upstream's answers.

Run: `celery -A bench.baselines.celery_rate_limit worker --loglevel=INFO`, with
REDIS_URL, CELERY_BROKER_URL, CELERY_RESULT_BACKEND, POKEAPI_BASE_URL and BENCH_RATE
(requests per second) in the environment.
"""

from __future__ import annotations

import json
import os

import redis
import requests
from celery import Celery

from tasks.pokemon_record import PokemonSummary, pokemon_summary

BASE_URL = os.environ["POKEAPI_BASE_URL"]
RATE = os.environ.get("BENCH_RATE", "40")

app = Celery(
    "celery_rate_limit",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
)
app.conf.broker_connection_retry_on_startup = True
store = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(  # type: ignore[untyped-decorator]
    name="tasks.pokemon.fetch_pokemon",
    rate_limit=f"{RATE}/s",
    autoretry_for=(requests.HTTPError,),
    retry_backoff=True,
    max_retries=5,
)
def fetch_pokemon(name: str) -> PokemonSummary:
    response = requests.get(f"{BASE_URL}/pokemon/{name}", timeout=10)
    response.raise_for_status()
    summary = pokemon_summary(json.loads(response.content))
    store.set(f"pokemon:{summary['name']}", json.dumps(summary))
    return summary
