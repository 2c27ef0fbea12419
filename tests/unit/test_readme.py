"""README.md documents every setting and every task name, so it stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from apis.config import ApiSettings
from worker.settings import WorkerSettings

README = (Path(__file__).parents[2] / "README.md").read_text()
SETTINGS = sorted(
    name.upper() for cls in (ApiSettings, WorkerSettings) for name in cls.model_fields
)
TASKS = [
    "tasks.pokemon.fetch_pokemon",
    "tasks.pokemon.refresh_catalog",
    "tasks.cms.sync_article",
    "tasks.cms.sync_articles",
    "tasks.semaphore.sync_pipelines",
    "tasks.semaphore.sync_all_projects",
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_is_documented(setting: str) -> None:
    """A new user finds each environment variable in the settings tables."""
    assert f"`{setting}`" in README


@pytest.mark.parametrize("task", TASKS)
def test_every_task_name_is_documented(task: str) -> None:
    """Task names are a public contract."""
    assert f"`{task}`" in README


def test_the_two_commands_are_named() -> None:
    """Clone to running worker and green suite with two commands."""
    assert "make run" in README
    assert "make test" in README
