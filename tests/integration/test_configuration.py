"""A bad setting stops the worker at start with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.celery_worker import REPO_ROOT


def import_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Build the app in a fresh interpreter with `env`: where settings are checked."""
    return subprocess.run(
        [sys.executable, "-c", "import worker"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_CONCURRENCY", "many"),
        ("POKEAPI_BASE_URL", "ftp://example.com"),
        ("HTTP_READ_TIMEOUT", "-1"),
        ("RESULT_KEY_PREFIX", "bad prefix!"),
        ("BROKER_VISIBILITY_TIMEOUT", "100"),  # below 2 x TASK_TIME_LIMIT + 300 s
        ("BROKER_DELIVERY_LIMIT", "0"),  # at least one delivery
        ("CELERY_BROKER_URL", "kafka://localhost:9092"),
        ("TASK_SOFT_TIME_LIMIT", "30"),
    ],
)
def test_invalid_settings_fail_at_start_naming_the_setting(name: str, value: str) -> None:
    """Exit status 1 and the field in the message, before any job is taken."""
    env = {**os.environ, name: value}
    done = import_worker(env)
    assert done.returncode == 1
    assert "invalid configuration" in done.stderr
    assert name.lower() in done.stderr.lower()


@pytest.mark.parametrize(
    "settings",
    [
        {"BROKER_VISIBILITY_TIMEOUT": "900"},  # a Redis setting, on RabbitMQ
        {"BROKER_HEARTBEAT_TIMEOUT": "10"},  # a Redis setting, on RabbitMQ
        {"BROKER_CONSUMER_TIMEOUT": "400"},  # under 150 s x (1 + 2)
    ],
)
def test_rabbitmq_refuses_settings_that_do_not_fit_it(settings: dict[str, str]) -> None:
    """With an amqp:// broker, a Redis-only setting or a consumer timeout shorter than a
    prefetched job can wait stops the worker at start, naming the setting."""
    env = {**os.environ, "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/x", **settings}
    done = import_worker(env)
    assert done.returncode == 1
    assert "invalid configuration" in done.stderr
    assert next(iter(settings)) in done.stderr


def test_a_missing_semaphore_token_does_not_stop_the_worker() -> None:
    """Optional credentials are checked per call, not at start."""
    env = {k: v for k, v in os.environ.items() if k != "SEMAPHORE_API_TOKEN"}
    done = import_worker(env)
    assert done.returncode == 0, done.stderr
