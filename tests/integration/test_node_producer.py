"""A Node.js service sends jobs with celery-node, unchanged: the worker runs them.

On Redis celery-node writes the same list items as a Celery producer (LPUSH of a kombu
envelope), so the Redis broker's reliable fetch (brokers/redis_transport.py) must take
them as they are. On RabbitMQ it declares the queue with no arguments at all and
publishes through the default exchange: RabbitMQ 3.10 accepts that declaration of an
existing quorum queue only in a vhost whose default queue type is quorum (as
`apiworker rabbitmq apply-policy` creates it), and only because the worker declares the
queue with `x-queue-type` and nothing else (its limits are policies). The client is
installed from tests/node/package.json (its lock file pins it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.celery_worker import REPO_ROOT

NODE_DIR = REPO_ROOT / "tests" / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The celery-node script, its packages installed (`npm ci`) on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true needs node and npm for the celery-node producer test")
        pytest.skip("node and npm are not installed: the celery-node producer is not tried")
    if not (NODE_DIR / "node_modules" / "celery-node").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return NODE_DIR / "send_task.js"


def test_a_celery_node_producer_is_served(
    node_client: Path, worker_env: dict[str, str], results: redis.Redis, sandbox: Any
) -> None:
    """celery-node sends fetch_pokemon to the pokeapi queue by name; the job is stored
    and celery-node reads its result from the result backend."""
    done = subprocess.run(
        ["node", str(node_client), worker_env["CELERY_BROKER_URL"],
         worker_env["CELERY_RESULT_BACKEND"], "pokeapi", "tasks.pokemon.fetch_pokemon",
         json.dumps(["charizard"])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "charizard"
    assert json.loads(results.get("pokemon:charizard"))["id"] == 6
