"""A real `celery -A worker beat` tick enqueues the catalog refresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import redis

from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import REPO_ROOT, wait_for


def queued_task_names(client: redis.Redis, queue: str) -> list[str]:
    return [json.loads(raw)["headers"]["task"] for raw in client.lrange(queue, 0, -1)]


def test_a_beat_tick_enqueues_refresh_catalog(redis_url: str, sandbox: Any, tmp_path) -> None:
    """With a 1 s interval, beat puts tasks.pokemon.refresh_catalog on the pokeapi queue."""
    broker = with_db(redis_url, 5)
    env = {
        **os.environ,
        **worker_environment(redis_url, sandbox, CELERY_BROKER_URL=broker),
        "POKEMON_REFRESH_INTERVAL": "1",
    }
    client = redis.Redis.from_url(broker, decode_responses=True)
    client.flushdb()
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO",
         f"--schedule={tmp_path / 'schedule'}"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(
            lambda: "tasks.pokemon.refresh_catalog" in queued_task_names(client, "pokeapi"),
            timeout=60,  # a cold start of `celery beat` on a loaded machine
            what="refresh_catalog on the pokeapi queue",
        )
    finally:
        beat.terminate()
        beat.wait(timeout=15)
        client.close()
