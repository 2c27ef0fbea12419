"""README.md documents every setting and every task name, so it stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.cli import PUBLIC_TASKS
from settings import setting_names
from upstreams import BUILT_IN

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


def test_the_table_of_upstreams_is_the_registry() -> None:
    """The README's table of upstreams lists the registry's entries, as they are."""
    expected = [
        f"| {u.description} | `{u.client}` | `{u.tasks}` | `{u.queue}` | "
        f"`{u.base_url_setting}` | `{u.rate_limit_setting}` | {'yes' if u.breaker else 'no'} |"
        for u in BUILT_IN
    ]
    start = README.index("| upstream | client | tasks | queue |")
    rows = README[start:].split("\n\n", 1)[0].splitlines()[2:]
    assert rows == expected


def test_the_settings_tables_are_the_settings_tree() -> None:
    """The tables under "Settings" list every variable of the settings tree, and only
    those: a renamed or removed setting cannot linger in the README."""
    start = README.index("\n## Settings\n")
    section = README[start : README.index("\n## ", start + 1)]
    documented = {
        line.split("|")[1].strip().strip("`")
        for line in section.splitlines()
        if line.startswith("| `") and line.split("|")[1].strip().strip("`").isupper()
    }
    assert documented == setting_names()
