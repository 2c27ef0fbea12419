"""`python -m worker` is Celery's worker command without the rest of Celery's CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from settings import setting_names
from tests.support.celery_worker import REPO_ROOT
from worker.__main__ import POOL_VARIABLE, chosen_pool

# Loaded by `celery -A worker worker` before the worker starts, never used by it.
CLI_ONLY = ("prompt_toolkit", "click_repl", "flower", "humanize")


def test_the_entry_point_takes_celery_worker_options_without_loading_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker", "--help"],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for option in ("--concurrency", "--hostname", "--loglevel", "--queues", "--pool"):
        assert option in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "celery.bin.worker" in imported
    assert not {name for name in imported if name.split(".")[0] in CLI_ONLY}, "CLI loaded"


def test_a_worker_process_does_not_load_requests() -> None:
    """requests (~4.5 MiB a process) is loaded only where it is called: the API layer's
    Link-header parser and the RabbitMQ management client, never by the worker's app."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, worker.app; print('requests' in sys.modules)"],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("argv", "environ", "pool"),
    [
        (["-P", "gevent"], {}, "gevent"),
        (["-Peventlet"], {}, "eventlet"),
        (["--pool", "solo"], {"WORKER_POOL": "gevent"}, "solo"),
        (["--pool=gevent", "--concurrency=4"], {}, "gevent"),
        (["--loglevel=INFO"], {"WORKER_POOL": "eventlet"}, "eventlet"),
        (["--loglevel=INFO"], {}, None),
    ],
)
def test_the_pool_is_read_from_the_command_line_then_the_setting(
    argv: list[str], environ: dict[str, str], pool: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POOL_VARIABLE, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert chosen_pool(argv) == pool


def test_the_pool_variable_is_the_settings_own() -> None:
    assert POOL_VARIABLE in setting_names()


def test_a_green_pool_is_patched_before_the_app_is_imported() -> None:
    """`python -m worker` imports this package first: it must not import the app, or
    the patching would come after the sockets and threads it patches were imported."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, worker; print('celery' in sys.modules)"],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
