"""The tracer's result text: the builtin repr where it equals Celery's saferepr."""

from __future__ import annotations

from typing import Any

import pytest
from celery.app import trace as celery_trace
from celery.utils.saferepr import saferepr

import worker.app  # noqa: F401  (installs the result repr)
from worker.result_repr import result_repr

CHARIZARD = {
    "id": 6,
    "name": "charizard",
    "image": "https://raw.githubusercontent.com/PokeAPI/sprites/master/sprites/pokemon/6.png",
    "height": "170 cm",
    "weight": "90.5 kg",
}
VALUES: list[Any] = [
    CHARIZARD,
    {"stored": 50, "failed": 0, "names": [f"name-{i}" for i in range(50)]},
    {"a": [1, {"b": [2]}]},  # four levels: saferepr writes [...]
    {"a": {"b": {"c": 1}}},
    [[[1]]],
    {"x": None, "y": True, "z": 1.5, "w": -0, "big": 10**30},
    {"s": "it's"},
    {"s": 'say "hi"'},
    {"s": "line\nbreak"},
    {"s": "back\\slash"},
    {"s": "tab\there", "u": "é ü 字"},
    {"ctl": "\x1b[31m"},
    {1: "int key"},
    ("a", "tuple"),
    {"set"},
    b"bytes",
    "plain",
    "",
    None,
    3,
    [],
    {},
    ["x" * 1020],
    ["x" * 1021],
    ["x" * 2000],
    {"k": "v" * 1015},
    {"k": "v" * 1016},
    list(range(400)),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize("maxlen", [1024, None, 10])
def test_the_text_is_what_saferepr_writes(value: Any, maxlen: int | None) -> None:
    """Every value, JSON-shaped or not, long or short, gets saferepr's exact text."""
    assert result_repr(value, maxlen) == saferepr(value, maxlen)


def test_the_worker_app_makes_celerys_tracer_use_it() -> None:
    """The tracer's name for the function is ours once the app is imported."""
    assert celery_trace.saferepr is result_repr
