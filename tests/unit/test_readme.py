"""README.md documents every setting and every task name, so it stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.cli import PUBLIC_TASKS
from settings import setting_names

README = (Path(__file__).parents[2] / "README.md").read_text()
SETTINGS = sorted(setting_names())


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_is_documented(setting: str) -> None:
    """A new user finds each environment variable in the settings tables."""
    assert f"`{setting}`" in README


@pytest.mark.parametrize("task", sorted(PUBLIC_TASKS))
def test_every_task_name_is_documented(task: str) -> None:
    """Task names are a public contract."""
    assert f"`{task}`" in README


def test_the_two_commands_are_named() -> None:
    """Clone to running worker and green suite with two commands."""
    assert "make run" in README
    assert "make test" in README
