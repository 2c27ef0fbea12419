"""Stock Celery around the threaded probe's job: what the framework alone costs a job.

The threaded probe's body (`bench.baselines.probe_threads`: urllib3 with connect and
read timeouts, a msgspec decode of five fields, the project's transform, a plain `SET
pokemon:{name}`) as a Celery task, on the project's layout: one worker process per core,
the threads pool with 32 threads each, kombu's stock Redis transport, late acks (a job
is acknowledged once done, as the project's are), task events off. No freshness, single
flight, retries, failure records, results, logs or metrics per job. Its row against the
threaded probe's is Celery's own cost a job; against the project's, what the project's
guarantees and its operations (logs, metrics, tracing hooks) cost on top.

Run: `python -m bench.baselines.celery_floor`, with REDIS_URL, CELERY_BROKER_URL and
POKEAPI_BASE_URL in the environment.
"""

from __future__ import annotations

import os

import redis
import urllib3
from celery import Celery

from bench.baselines.lean import run_per_core
from bench.baselines.probe_threads import THREADS, fetch_and_store
from tasks.pokemon_record import PokemonSummary

BASE_URL = os.environ["POKEAPI_BASE_URL"]
# The project's task name and queue, as literals: bench.systems loads the project's
# settings and pydantic, which would be counted in the floor's memory
# (tests/unit/test_bench_floors.py holds them equal to the project's).
FETCH_TASK = "tasks.pokemon.fetch_pokemon"
QUEUE = "pokeapi"

app = Celery("celery_floor", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(
    worker_pool="threads",
    worker_concurrency=THREADS,
    task_acks_late=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_pool_limit=THREADS,
)
store = redis.Redis.from_url(os.environ["REDIS_URL"], max_connections=THREADS, socket_timeout=5)
http = urllib3.PoolManager(maxsize=THREADS, block=False)


# Not shared: a shared task would join every Celery app finalised later in the same
# process (a test's), under the project's own task name.
@app.task(name=FETCH_TASK, shared=False)  # type: ignore[untyped-decorator]
def fetch_pokemon(name: str) -> PokemonSummary:
    return fetch_and_store(http, store, BASE_URL, name)


def _worker() -> None:
    app.worker_main(
        [
            "worker",
            "--loglevel=WARNING",
            f"--queues={QUEUE}",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ]
    )


def main() -> None:
    run_per_core(_worker)


if __name__ == "__main__":
    main()
