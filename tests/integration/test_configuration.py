"""A bad setting stops the worker at start with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.celery_worker import REPO_ROOT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_CONCURRENCY", "many"),
        ("POKEAPI_BASE_URL", "ftp://example.com"),
        ("HTTP_READ_TIMEOUT", "-1"),
        ("RESULT_KEY_PREFIX", "bad prefix!"),
        ("BROKER_VISIBILITY_TIMEOUT", "100"),
        ("TASK_SOFT_TIME_LIMIT", "30"),
    ],
)
def test_invalid_settings_fail_at_start_naming_the_setting(name: str, value: str) -> None:
    """Exit status 1 and the field in the message, before any job is taken."""
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, "-c", "import worker"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "invalid configuration" in done.stderr
    assert name.lower() in done.stderr.lower()


def test_a_missing_semaphore_token_does_not_stop_the_worker() -> None:
    """Optional credentials are checked per call, not at start."""
    env = {k: v for k, v in os.environ.items() if k != "SEMAPHORE_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-c", "import worker"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
