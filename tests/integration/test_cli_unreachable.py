"""Every command meets an unreachable Redis or broker the same way: one line naming the
server's URL (password masked) and the variable it came from, exit 1, and no wait for
Celery's own reconnect loop (about 20 s on `enqueue`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cli.base import Services
from tests.support.celery_worker import REPO_ROOT
from tests.support.run_process import clean_env

APIWORKER = Path(sys.executable).with_name("apiworker")
DEAD = "redis://apiworker:s3cret-pw@127.0.0.1:1/0"  # nothing listens on port 1
DEAD_SHOWN = "redis://apiworker:***@127.0.0.1:1/0"
DEAD_AMQP = "amqp://apiworker:s3cret-pw@127.0.0.1:1/apiworker"
DEAD_AMQP_SHOWN = "amqp://apiworker:***@127.0.0.1:1/apiworker"

COMMANDS = [
    ["enqueue", "tasks.pokemon.fetch_pokemon", "pikachu"],
    ["enqueue", "tasks.pokemon.fetch_pokemon", "pikachu", "--wait"],
    ["result", "pokemon", "pikachu"],
    ["queues"],
    ["top", "--once"],
    ["failures", "list"],
    ["failures", "replay", "--all"],
    ["dead-letters", "list"],
    ["follow", "--count", "1"],
]


def apiworker(command: list[str], **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [str(APIWORKER), *command], env=clean_env(HOME=os.environ["HOME"], **env),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.returncode, (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_unreachable_redis_is_one_line_naming_url_and_variable(command: list[str]) -> None:
    """Exit 1 with one line naming the masked URL and REDIS_URL, no password, no
    traceback; a hang would end in the subprocess timeout (30 s: a start and exit take
    about 1 s alone, 10 s on a loaded host), far below Celery's reconnect loop."""
    code, output = apiworker(command, REDIS_URL=DEAD)
    assert code == 1, output
    assert len(output.splitlines()) == 1, output
    assert output.startswith("Error: cannot reach "), output
    assert f"at {DEAD_SHOWN} (REDIS_URL): " in output, output
    assert "s3cret-pw" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c[0] in ("enqueue", "queues", "dead-letters")], ids=" ".join
)
def test_an_unreachable_rabbitmq_is_one_line_naming_url_and_variable(command: list[str]) -> None:
    """The broker named as CELERY_BROKER_URL gives it, password masked, exit 1."""
    code, output = apiworker(command, CELERY_BROKER_URL=DEAD_AMQP, REDIS_URL=DEAD)
    assert code == 1, output
    assert len(output.splitlines()) == 1, output
    assert f"cannot reach the broker at {DEAD_AMQP_SHOWN} (CELERY_BROKER_URL): " in output
    assert "s3cret-pw" not in output


def test_health_names_each_unreachable_server_and_its_variable() -> None:
    """`health` keeps its one row per check; the broker and results rows name the URL
    and the variable it came from."""
    code, output = apiworker(["health", "--timeout", "1"], CELERY_BROKER_URL=DEAD_AMQP,
                             REDIS_URL=DEAD)  # fmt: skip
    assert code == 1, output
    assert f"FAIL  broker     {DEAD_AMQP_SHOWN} (CELERY_BROKER_URL): " in output, output
    assert f"FAIL  results    {DEAD_SHOWN} (REDIS_URL): " in output, output
    assert "s3cret-pw" not in output


def test_an_unset_redis_url_is_named_as_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """With REDIS_URL unset, errors and `result` say the Redis read is the default's (no
    connection is made to find out)."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    endpoint = Services().results_endpoint()
    assert endpoint.describe() == "Redis at redis://localhost:6379/0 (REDIS_URL unset: its default)"
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert Services({"redis_url": DEAD}).results_endpoint().source == "--redis-url"
