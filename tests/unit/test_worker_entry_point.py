"""`python -m worker` is Celery's worker command without the rest of Celery's CLI, and a
worker process loads none of the packages it does not use."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from settings import setting_names
from tests.support.celery_worker import run_python
from worker.__main__ import POOL_VARIABLE, chosen_pool
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
    done = run_python("-m", "worker", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    for option in ("--concurrency", "--hostname", "--loglevel", "--queues", "--pool"):
        assert option in done.stdout


@pytest.mark.parametrize("name", KEPT_OUT)
def test_the_package_is_installed_so_the_next_test_can_fail(name: str) -> None:
    """Each package kept out is importable here: its absence from a worker is a choice."""
    assert importlib.util.find_spec(name) is not None


def test_a_worker_process_loads_none_of_the_packages_it_does_not_use() -> None:
    """What `python -m worker` imports before it starts (its `main`, the app, its tasks,
    Celery's worker command) holds none of KEPT_OUT."""
    script = (
        "import sys, worker.__main__\n"
        "try:\n    worker.__main__.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import celery.apps.worker, celery.worker\n"
        "from worker.app import app; app.loader.import_default_modules()\n"
        "print('MODULES', *sys.modules)"
    )
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split("MODULES", 1)[1].split())
    assert {"celery.bin.worker", "kombu.serialization", "tenacity", "redis"} <= loaded
    leaked = {
        name for name in KEPT_OUT for module in loaded
        if module == name or module.startswith(f"{name}.")
    }  # fmt: skip
    assert not leaked, f"a worker process loaded {sorted(leaked)}"


def test_a_package_kept_out_imports_as_usual_afterwards() -> None:
    """The mark lasts only while a library imports: yaml (which the CLI's manifests use)
    is refused inside the block and loads after it."""
    done = run_python(
        "-c",
        "import sys, worker.app; from worker.optional_imports import absent\n"
        "with absent(('yaml',)):\n"
        "    try:\n        import yaml\n    except ImportError:\n        print('refused')\n"
        "import yaml; print(yaml.safe_load('a: 1'))",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["refused", "{'a': 1}"]


def test_a_module_already_loaded_stays_loaded() -> None:
    """`absent` marks only what is not imported yet: it never unloads a module."""
    with absent(("json",)):
        import json

        assert json.loads("1") == 1
    assert sys.modules["json"] is json


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
    done = run_python("-c", "import sys, worker; print('celery' in sys.modules)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
