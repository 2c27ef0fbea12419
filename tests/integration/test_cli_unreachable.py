"""Every command meets an unreachable Redis or broker the same way: one line naming the
host, exit 1, and no wait for Celery's own reconnect loop (about 20 s on `enqueue`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.celery_worker import REPO_ROOT
from tests.support.run_process import clean_env

APIWORKER = Path(sys.executable).with_name("apiworker")
DEAD = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.mark.parametrize(
    "command",
    [
        ["enqueue", "tasks.pokemon.fetch_pokemon", "pikachu"],
        ["enqueue", "tasks.pokemon.fetch_pokemon", "pikachu", "--wait"],
        ["result", "pokemon", "pikachu"],
        ["queues"],
        ["top", "--once"],
        ["failures", "list"],
        ["dead-letters", "list"],
        ["follow", "--count", "1"],
    ],
    ids=" ".join,
)
def test_an_unreachable_redis_is_one_line_and_exit_1(command: list[str]) -> None:
    """Exit 1 with one line that names 127.0.0.1:1, no traceback; a hang would end in
    the subprocess timeout, far below Celery's reconnect loop."""
    done = subprocess.run(
        [str(APIWORKER), *command], env=clean_env(REDIS_URL=DEAD, HOME=os.environ["HOME"]),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert len(output.splitlines()) == 1, output
    assert "127.0.0.1:1" in output
    assert "Traceback" not in output
