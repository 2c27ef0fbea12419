"""The bench's floors of the project's model do the project's job, and only that.

`probe-threads` and `celery-floor` (bench/baselines) are measured against the project; a
floor that decoded a different record, or a Celery floor that acked early or kept
results, would make the comparison say nothing. Their speed is the bench's business; so
is `bench.import_cost`'s figure, but not whether it measures over the floor's imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import msgspec
import orjson
import pytest

from apis.config import DEFAULT_CONCURRENT_CALLS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT
from apis.pokeapi import decode_record_fields
from bench.baselines.lean import decode_record
from bench.baselines.probe_threads import THREADS, TIMEOUT
from bench.import_cost import FLOOR_ENVIRONMENT, added
from bench.systems import (
    ALL_SYSTEMS,
    CELERY_FLOOR,
    FETCH_TASK,
    PROBE_THREADS,
    PROJECT,
    SYSTEMS,
)
from ops.processes.children import REPO_ROOT

RECORD = orjson.dumps(
    {
        "id": 6,
        "name": "charizard",
        "height": 17,
        "weight": 905,
        "sprites": {"front_default": "https://img.example/6.png", "back_default": None},
        "moves": [{"move": {"name": "mega-punch"}}] * 50,
        "stats": [],
    }
)


def test_the_threaded_floor_decodes_the_fields_the_project_decodes() -> None:
    assert msgspec.to_builtins(decode_record(RECORD)) == decode_record_fields(RECORD)


# Run in a fresh interpreter, as the bench runs the floor: in the suite's process the
# project's own shared tasks are registered, and every Celery app made there gets them.
_INSPECT_FLOOR = """
import json, sys
from celery import Celery
import bench.baselines.celery_floor as floor
conf = floor.app.conf
task = floor.app.tasks[{task!r}]
later = Celery("later", set_as_current=False)
later.finalize()
print(json.dumps({{
    "task_module": task.run.__module__,
    "acks_late": conf.task_acks_late,
    "ignore_result": conf.task_ignore_result,
    "pool": conf.worker_pool,
    "events": conf.worker_send_task_events,
    "later_has_it": {task!r} in later.tasks,
    "task_name": floor.FETCH_TASK,
    "queue": floor.QUEUE,
    "loads_the_project_settings": "pydantic" in sys.modules or "settings" in sys.modules,
}}))
"""


@pytest.fixture(scope="module")
def celery_floor() -> dict[str, Any]:
    """What the floor's module sets up when imported alone, its settings pointing nowhere
    (nothing connects)."""
    completed = subprocess.run(
        [sys.executable, "-c", _INSPECT_FLOOR.format(task=FETCH_TASK)],
        cwd=REPO_ROOT,
        env={**os.environ, **FLOOR_ENVIRONMENT},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    inspected: dict[str, Any] = json.loads(completed.stdout)
    return inspected


def test_the_celery_floor_is_stock_celery_with_late_acks_and_no_results(
    celery_floor: dict[str, Any],
) -> None:
    assert celery_floor["task_module"] == "bench.baselines.celery_floor"
    assert celery_floor["acks_late"] is True
    assert celery_floor["ignore_result"] is True
    assert celery_floor["pool"] == "threads"
    assert not celery_floor["events"]


def test_the_floors_run_the_projects_default_pool_size_and_timeouts() -> None:
    assert THREADS == DEFAULT_CONCURRENT_CALLS
    assert (TIMEOUT.connect_timeout, TIMEOUT.read_timeout) == (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_READ_TIMEOUT,
    )


def test_both_floors_are_offered_but_not_in_a_default_run() -> None:
    assert {PROBE_THREADS, CELERY_FLOOR} <= set(ALL_SYSTEMS)
    assert not {PROBE_THREADS, CELERY_FLOOR} & set(SYSTEMS)
    assert ALL_SYSTEMS[CELERY_FLOOR].queue == SYSTEMS[PROJECT].queue


def test_the_celery_floor_takes_the_projects_jobs(celery_floor: dict[str, Any]) -> None:
    assert celery_floor["task_name"] == FETCH_TASK
    assert celery_floor["queue"] == SYSTEMS[PROJECT].queue


def test_the_celery_floor_loads_neither_the_projects_settings_nor_pydantic(
    celery_floor: dict[str, Any],
) -> None:
    """They are the project's start-up heap; in the floor they would blur the comparison."""
    assert celery_floor["loads_the_project_settings"] is False


def test_importing_the_celery_floor_leaves_other_apps_their_own_task(
    celery_floor: dict[str, Any],
) -> None:
    """Its task shares the project's name; it must not join apps finalised later."""
    assert celery_floor["later_has_it"] is False


def test_the_import_cost_of_a_package_is_measured_over_the_floor() -> None:
    """A package the floor does not load adds memory and modules; one it loads adds none."""
    mib, modules = added(("tenacity",))
    assert mib > 0
    assert modules > 0
    assert added(("kombu.transport.redis",))[1] == 0
