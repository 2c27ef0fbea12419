"""`python -m worker` is Celery's worker command without the rest of Celery's CLI."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.celery_worker import REPO_ROOT

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
