"""The README's "Reading results" examples, run as another service would run them.

Each example is the very file the README shows (Python, in full) or links (Node.js);
here each reads a real worker's output: a stored result with its metadata, and the
result events through a consumer group that acknowledges each one. The readers read
Redis only, so one broker is enough.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import redis
from celery import Celery

from tests.integration.conftest import with_db
from tests.support.celery_worker import REPO_ROOT

pytestmark = pytest.mark.broker("redis")

READERS = REPO_ROOT / "examples" / "readers"
README = REPO_ROOT / "README.md"
TIMEOUT = 30


def node_ready() -> None:
    """ioredis installed from the lock file (`npm ci`) on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true needs node and npm for the Node.js reader")
        pytest.skip("node and npm are not installed: the Node.js reader is not tried")
    if not (READERS / "node_modules" / "ioredis").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(READERS)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip


def reader(language: str) -> list[str]:
    if language == "node":
        node_ready()
        return ["node", str(READERS / "read_results.js")]
    return [sys.executable, str(READERS / "read_results.py")]


def read(language: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The reader's own environment: REDIS_URL and nothing of the worker's settings.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "REDIS_URL": with_db(redis_url, 0),
    }
    return subprocess.run(
        [*reader(language), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("language", ["python", "node"])
def test_a_reader_gets_a_result_and_follows_its_event(
    language: str, producer: Celery, results: redis.Redis, redis_url: str
) -> None:
    """`get` prints the stored value and its metadata (the job's id); `follow` prints the
    job's event from a new group and acknowledges it (nothing left pending), and a second
    run of the same consumer finds nothing left to re-read."""
    job = producer.send_task("tasks.pokemon.fetch_pokemon", args=["charizard"])
    job.get(timeout=TIMEOUT)
    got = read(language, redis_url, "get", "pokemon", "charizard")
    assert got.returncode == 0, got.stderr
    printed = json.loads(got.stdout)
    assert printed["value"] == json.loads(results.get("pokemon:charizard"))
    assert printed["meta"]["task_id"] == job.id
    assert int(printed["meta"]["fetched_at_ms"]) > 0

    followed = read(language, redis_url, "follow", "svc", "reader-1", "--count", "1",
                    "--from-start")  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    [event] = [json.loads(line) for line in followed.stdout.splitlines()]
    assert event["key"] == "pokemon:charizard"
    assert event["task_id"] == job.id
    assert event["entry_id"] == results.xrange("events:results")[0][0]
    assert results.xpending("events:results", "svc")["pending"] == 0

    # The group goes on where it stopped: the next event is the next job's, not the first.
    second = producer.send_task("tasks.pokemon.fetch_pokemon", args=["pikachu"])
    second.get(timeout=TIMEOUT)
    again = read(language, redis_url, "follow", "svc", "reader-1", "--count", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["key"] == "pokemon:pikachu"


@pytest.mark.parametrize("language", ["python", "node"])
def test_a_reader_says_when_nothing_is_stored(language: str, redis_url: str) -> None:
    """`get` of an absent result: exit 1 and the key on stderr."""
    got = read(language, redis_url, "get", "pokemon", "missingno")
    assert got.returncode == 1
    assert "no result at pokemon:missingno" in got.stderr


def test_the_readme_shows_the_python_reader_as_it_is_and_links_the_others() -> None:
    """The README's Python block is the file, byte for byte; the Node.js file is linked."""
    text = README.read_text()
    section = text[text.index("## Reading results") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) == (READERS / "read_results.py").read_text()
    assert "(examples/readers/read_results.js)" in section
    assert "(examples/readers/package.json)" in section
