"""The CLI's copy of the public task contract and its checks, without Redis or a worker."""

from __future__ import annotations

import inspect
import re

import click
import pytest

import tasks.cms
import tasks.pokemon
import tasks.semaphore
from ops.cli import PUBLIC_TASKS, check_call
from telemetry.redact import masked_url
from worker.app import app

TASK_MODULES = (tasks.cms, tasks.pokemon, tasks.semaphore)  # importing them registers the tasks


def test_public_tasks_match_the_registered_tasks() -> None:
    """Every `tasks.*` task of the app is known to the CLI, with the same parameters."""
    registered = {
        name: tuple(inspect.signature(task.run).parameters)
        for name, task in app.tasks.items()
        if name.startswith("tasks.") and not getattr(task, "internal", False)
    }
    assert registered == dict(PUBLIC_TASKS)


@pytest.mark.parametrize(
    ("task", "args", "kwargs"),
    [
        ("tasks.pokemon.fetch_pokemon", ["pikachu"], {}),
        ("tasks.pokemon.fetch_pokemon", [], {"name_or_id": "pikachu"}),
        ("tasks.cms.sync_articles", [], {}),
    ],
)
def test_check_call_accepts_a_complete_call(
    task: str, args: list[str], kwargs: dict[str, str]
) -> None:
    """Positional or keyword, a call that binds every parameter passes."""
    check_call(task, args, kwargs)


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "message"),
    [
        ("tasks.pokemon.fetch", ["x"], {}, "did you mean tasks.pokemon.fetch_pokemon"),
        ("tasks.pokemon.fetch_pokemon", [], {}, "missing argument(s): name_or_id"),
        ("tasks.pokemon.fetch_pokemon", ["a", "b"], {}, "takes 1 positional argument(s)"),
        ("tasks.pokemon.fetch_pokemon", ["a"], {"name_or_id": "b"}, "given twice: name_or_id"),
        ("tasks.cms.sync_articles", [], {"limit": 1}, "unknown keyword argument(s): limit"),
    ],
)
def test_check_call_refuses_what_the_worker_could_not_run(
    task: str, args: list[str], kwargs: dict[str, object], message: str
) -> None:
    """Unknown names and arguments that do not bind are usage errors."""
    with pytest.raises(click.UsageError, match=re.escape(message)):
        check_call(task, args, kwargs)


def test_masked_url_masks_only_the_password() -> None:
    """A Redis password never reaches the output; the rest of the URL does."""
    assert masked_url("redis://:s3cret@cache:6380/1") == "redis://:***@cache:6380/1"
    assert masked_url("redis://user:s3cret@cache/0") == "redis://user:***@cache/0"
    assert masked_url("redis://cache:6379/0") == "redis://cache:6379/0"
