"""A bad setting stops every entry point at start: one line per bad variable, named as
the user set it, with its value and what is allowed; exit 2, a usage error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.celery_worker import REPO_ROOT
from tests.support.run_process import clean_env

APIWORKER = Path(sys.executable).with_name("apiworker")


def import_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Build the app in a fresh interpreter with `env`: where settings are checked."""
    return subprocess.run(
        [sys.executable, "-c", "from worker import app"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def run(command: list[str], **settings: str) -> subprocess.CompletedProcess[str]:
    """`command` from the repository root with only `settings` beyond a clean environment."""
    return subprocess.run(
        command, cwd=REPO_ROOT, env=clean_env(HOME=os.environ["HOME"], **settings),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_usage_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 2, exactly one line per expected start, no pydantic dump, no traceback."""
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    lines = output.splitlines()
    assert len(lines) == len(expected), output
    for line, start in zip(lines, expected, strict=True):
        assert re.sub(r"^.*?[Ee]rror: ", "", line, count=1).startswith(start), output
    for noise in ("Traceback", "pydantic", "validation error", "input_value"):
        assert noise not in output, output


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("WORKER_CONCURRENCY", "many", "WORKER_CONCURRENCY='many': must be an integer"),
        (
            "POKEAPI_BASE_URL",
            "ftp://example.com",
            "POKEAPI_BASE_URL='ftp://example.com': must be an absolute http(s) URL",
        ),
        ("HTTP_READ_TIMEOUT", "-1", "HTTP_READ_TIMEOUT='-1': must be greater than 0"),
        ("RESULT_KEY_PREFIX", "bad prefix!", "RESULT_KEY_PREFIX='bad prefix!': must match"),
        # below 2 x TASK_TIME_LIMIT + 300 s
        ("BROKER_VISIBILITY_TIMEOUT", "100", "BROKER_VISIBILITY_TIMEOUT (100s) must be at least"),
        ("BROKER_DELIVERY_LIMIT", "0", "BROKER_DELIVERY_LIMIT='0': must be at least 1"),
        (
            "CELERY_BROKER_URL",
            "kafka://localhost:9092",
            "CELERY_BROKER_URL='kafka://localhost:9092': unsupported scheme 'kafka'",
        ),
        ("TASK_SOFT_TIME_LIMIT", "30", "TASK_SOFT_TIME_LIMIT (30s) must exceed"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL='LOUD': must be one of 'DEBUG', 'INFO'"),
    ],
)
def test_invalid_settings_fail_at_start_naming_the_setting(
    name: str, value: str, line: str
) -> None:
    """Building the app (`celery -A worker`, `python -m worker`) exits 2 with one line
    naming the variable, before any job is taken."""
    done = import_worker(clean_env(HOME=os.environ["HOME"], **{name: value}))
    assert_usage_error(done, line)


def test_every_bad_variable_gets_its_own_line() -> None:
    """Two bad variables in two sections of the tree: two lines, not only the first."""
    done = import_worker(
        clean_env(HOME=os.environ["HOME"], WORKER_CONCURRENCY="abc", HTTP_READ_TIMEOUT="-1")
    )
    assert_usage_error(
        done,
        "WORKER_CONCURRENCY='abc': must be an integer",
        "HTTP_READ_TIMEOUT='-1': must be greater than 0",
    )


def test_a_password_in_a_bad_url_is_masked() -> None:
    """The value is echoed, but never a credential inside it."""
    done = import_worker(
        clean_env(HOME=os.environ["HOME"], CELERY_BROKER_URL="kafka://u:hunter2@host:9092")
    )
    assert_usage_error(done, "CELERY_BROKER_URL='kafka://u:***@host:9092': unsupported")
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "worker", "--pool", "solo"],
        [sys.executable, "-m", "ops.run", "--no-flower"],
        [str(APIWORKER), "queues"],
        [str(APIWORKER), "result", "pokemon", "pikachu"],
        [str(APIWORKER), "enqueue", "tasks.pokemon.fetch_pokemon", "pikachu"],
        [str(APIWORKER), "health"],
    ],
    ids=lambda command: " ".join(Path(part).name for part in command[:4]),
)
def test_every_entry_point_reports_a_bad_setting_the_same_way(command: list[str]) -> None:
    """The worker, `make run` and the CLI's commands: exit 2, one line, the variable."""
    done = run(command, WORKER_CONCURRENCY="abc")
    assert_usage_error(done, "WORKER_CONCURRENCY='abc': must be an integer")


@pytest.mark.parametrize("command", [["--help"], ["enqueue", "--help"], ["result", "--help"]])
def test_help_works_whatever_the_settings(command: list[str]) -> None:
    """`apiworker --help` (and a command's) needs no valid setting."""
    done = run([str(APIWORKER), *command], WORKER_CONCURRENCY="abc", HTTP_READ_TIMEOUT="-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: apiworker"), done.stdout


@pytest.mark.parametrize(
    "settings",
    [
        {"BROKER_VISIBILITY_TIMEOUT": "900"},  # a Redis setting, on RabbitMQ
        {"BROKER_HEARTBEAT_TIMEOUT": "10"},  # a Redis setting, on RabbitMQ
        {"BROKER_CONSUMER_TIMEOUT": "400"},  # under 150 s x (1 + 4 queues x 1)
    ],
)
def test_rabbitmq_refuses_settings_that_do_not_fit_it(settings: dict[str, str]) -> None:
    """With an amqp:// broker, a Redis-only setting or a consumer timeout shorter than a
    prefetched job can wait stops the worker at start (exit 2), naming the setting."""
    env = {**os.environ, "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/x", **settings}
    done = import_worker(env)
    assert_usage_error(done, next(iter(settings)))


def test_a_missing_semaphore_token_does_not_stop_the_worker() -> None:
    """Optional credentials are checked per call, not at start."""
    env = {k: v for k, v in os.environ.items() if k != "SEMAPHORE_API_TOKEN"}
    done = import_worker(env)
    assert done.returncode == 0, done.stderr
