"""Test workers run the production defaults, except the suite's overrides, each explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ops.processes.worker import WorkerProcess
from settings import setting_models, setting_names
from tests.integration.conftest import SUITE_OVERRIDES, worker_environment
from tests.support.celery_worker import REPO_ROOT
from upstreams import offline_settings

WIRING = {
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    *offline_settings("http://127.0.0.1:1", "token"),
}


def test_a_test_worker_inherits_no_setting_from_the_shell_or_the_test(
    monkeypatch: pytest.MonkeyPatch, sandbox_server: Any
) -> None:
    """Settings in the pytest process's environment do not reach a worker's environment."""
    monkeypatch.setenv("HTTP_RETRY_ATTEMPTS", "1")
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "0")
    monkeypatch.setenv("TASK_MAX_RETRIES", "0")
    env = WorkerProcess(worker_environment("redis://127.0.0.1:1/0", sandbox_server)).env
    assert {name for name in env if name in setting_names()} == WIRING | set(SUITE_OVERRIDES)
    assert "CIRCUIT_FAILURE_THRESHOLD" not in env  # so the breaker is on, at its default


def test_each_suite_override_is_a_setting_that_differs_from_its_default_and_says_why() -> None:
    """An override that equals the default, or has no reason, is not an override."""
    defaults = {
        name.upper(): field.default
        for cls in setting_models()
        for name, field in cls.model_fields.items()
    }
    for name, (value, reason) in SUITE_OVERRIDES.items():
        assert name in setting_names(), name
        assert str(defaults[name]) != value, name
        assert len(reason) > 10, name


def test_docs_list_every_suite_override() -> None:
    """docs/reliability.md names each setting the suite changes from production."""
    doc = (Path(REPO_ROOT) / "docs" / "reliability.md").read_text()
    for name in SUITE_OVERRIDES:
        assert f"`{name.removesuffix('_MAX')}" in doc, name
