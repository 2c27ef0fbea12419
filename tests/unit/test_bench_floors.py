"""The bench's floors of the project's model do the project's job, and only that.

`probe-threads` and `celery-floor` (bench/baselines) are measured against the project; a
floor that decoded a different record, or a Celery floor that acked early or kept
results, would make the comparison say nothing. Their speed is the bench's business; so
is `bench.import_cost`'s figure, but not whether it measures over the floor's imports.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import msgspec
import orjson
import pytest
from celery import Celery

from apis.pokeapi import decode_record_fields
from bench.baselines.lean import decode_record
from bench.import_cost import added
from bench.systems import ALL_SYSTEMS, CELERY_FLOOR, FETCH_TASK, PROBE_THREADS, SYSTEMS

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


@pytest.fixture
def celery_floor(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The module imported afresh, its settings pointing nowhere (nothing connects)."""
    monkeypatch.setenv("POKEAPI_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:9/1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.delitem(sys.modules, "bench.baselines.celery_floor", raising=False)
    return importlib.import_module("bench.baselines.celery_floor")


def test_the_celery_floor_is_stock_celery_with_late_acks_and_no_results(
    celery_floor: ModuleType,
) -> None:
    floor = celery_floor
    conf = floor.app.conf
    assert FETCH_TASK in floor.app.tasks
    assert conf.task_acks_late is True
    assert conf.task_ignore_result is True
    assert conf.worker_pool == "threads"
    assert not conf.worker_send_task_events


def test_both_floors_are_offered_but_not_in_a_default_run() -> None:
    assert {PROBE_THREADS, CELERY_FLOOR} <= set(ALL_SYSTEMS)
    assert not {PROBE_THREADS, CELERY_FLOOR} & set(SYSTEMS)
    assert ALL_SYSTEMS[CELERY_FLOOR].queue == "pokeapi"


@pytest.mark.usefixtures("celery_floor")
def test_importing_the_celery_floor_leaves_other_apps_their_own_task() -> None:
    """Its task shares the project's name; it must not join apps finalised later."""
    later = Celery("later", set_as_current=False)
    later.finalize()
    assert FETCH_TASK not in later.tasks


def test_the_import_cost_of_a_package_is_measured_over_the_floor() -> None:
    """A package the floor does not load adds memory and modules; one it loads adds none."""
    mib, modules = added(("tenacity",))
    assert mib > 0
    assert modules > 0
    assert added(("kombu.transport.redis",))[1] == 0
