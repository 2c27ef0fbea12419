"""The worker's malloc arena cap: applied on glibc, left to an operator's MALLOC_ARENA_MAX."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.celery_worker import REPO_ROOT
from worker.tuning import limit_malloc_arenas


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MALLOC_ARENA_MAX set, glibc's own reading of it decides: nothing is changed."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_the_cap_is_applied_when_the_worker_module_is_imported() -> None:
    """Importing worker.tuning in a fresh process calls mallopt, which glibc accepts."""
    assert sys.platform == "linux"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.environ.pop('MALLOC_ARENA_MAX', None); "
            "import worker.tuning as t; print(t.limit_malloc_arenas())",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert completed.stdout.strip() == "True"
