"""`python -m worker` is Celery's worker command without the rest of Celery's CLI, and a
worker process loads none of the packages it does not use."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.support.celery_worker import REPO_ROOT
from worker.optional_imports import absent

# Loaded by `celery -A worker worker` before the worker starts, never used by it.
CLI_ONLY = ("prompt_toolkit", "click_repl", "flower", "humanize")

# Installed here (the dev, flower and tracing extras), kept out of a worker process
# (docs/performance.md, "Memory per worker process"): requests, which only the CLI's
# RabbitMQ management client and the API layer's Link-header parser call (~4.5 MiB);
# the optional packages redis-py, kombu and tenacity would wire in
# (worker/optional_imports.py); pygments, with which Celery's command-line base colours
# output a worker never prints (worker/__main__.py).
KEPT_OUT = (
    *CLI_ONLY, "requests", "opentelemetry.metrics", "opentelemetry.sdk.metrics", "yaml",
    "tornado", "pygments",
)  # fmt: skip


def test_the_entry_point_takes_celery_worker_options_without_loading_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--help"],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for option in ("--concurrency", "--hostname", "--loglevel", "--queues", "--pool"):
        assert option in done.stdout


@pytest.mark.parametrize("name", KEPT_OUT)
def test_the_package_is_installed_so_the_next_test_can_fail(name: str) -> None:
    """Each package kept out is importable here: its absence from a worker is a choice."""
    assert importlib.util.find_spec(name) is not None


def test_a_worker_process_loads_none_of_the_packages_it_does_not_use() -> None:
    """What `python -m worker` imports before it starts (the app, its tasks, Celery's
    worker command) holds none of KEPT_OUT."""
    script = (
        "import sys, worker.__main__, celery.apps.worker, celery.worker;"
        "from worker.app import app; app.loader.import_default_modules();"
        "print('\\n'.join(sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split())
    assert {"celery.bin.worker", "kombu.serialization", "tenacity", "redis"} <= loaded
    leaked = {
        name for name in KEPT_OUT for module in loaded
        if module == name or module.startswith(f"{name}.")
    }  # fmt: skip
    assert not leaked, f"a worker process loaded {sorted(leaked)}"


def test_a_package_kept_out_imports_as_usual_afterwards() -> None:
    """The mark lasts only while a library imports: yaml (which the CLI's manifests use)
    is refused inside the block and loads after it."""
    done = subprocess.run(
        [
            sys.executable, "-c",
            "import sys, worker.app; from worker.optional_imports import absent\n"
            "with absent(('yaml',)):\n"
            "    try:\n        import yaml\n    except ImportError:\n        print('refused')\n"
            "import yaml; print(yaml.safe_load('a: 1'))",
        ],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["refused", "{'a': 1}"]


def test_a_module_already_loaded_stays_loaded() -> None:
    """`absent` marks only what is not imported yet: it never unloads a module."""
    with absent(("json",)):
        import json

        assert json.loads("1") == 1
    assert sys.modules["json"] is json
