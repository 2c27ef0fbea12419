"""Flower's search index parses each job's kwargs text once, with Flower's own answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flower.utils.search as search  # the flower extra (make install)
import pytest

from tests.support.celery_worker import run_python
from worker import flower_search


@pytest.fixture
def original() -> Iterator[Any]:
    """Flower's own parser, unwrapped for the test (importing the app here, with Flower
    loaded, may have wrapped it already), and the module as it was put back after."""
    before = search._kwargs_pairs
    unwrapped = getattr(before, "__wrapped__", before)
    search._kwargs_pairs = unwrapped
    yield unwrapped
    search._kwargs_pairs = before


@pytest.mark.parametrize(
    "value",
    ["{}", "{'name': 'Pikachu', 'n': 2}", "('charizard',)", "not python", "", None, {"a": 1}],
)
def test_the_wrapped_parser_answers_as_flowers_own(original: Any, value: Any) -> None:
    assert flower_search.install()
    assert search._kwargs_pairs(value) == original(value)
    assert search._kwargs_pairs(value) == original(value)


def test_a_text_is_parsed_once(original: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second event of a job with the same kwargs text does not parse it again."""
    parsed: list[str] = []
    real_literal_eval = search.ast.literal_eval

    def counting(text: str) -> Any:
        parsed.append(text)
        return real_literal_eval(text)

    monkeypatch.setattr(search.ast, "literal_eval", counting)
    assert flower_search.install()
    text = "{'unique-to-this-test': 1}"
    first = search._kwargs_pairs(text)
    assert search._kwargs_pairs(text) is first
    assert parsed == [text]


def test_it_wraps_once(original: Any) -> None:
    assert flower_search.install()
    assert not flower_search.install()


def test_flowers_process_gets_the_cache_and_a_worker_does_not() -> None:
    """`celery -A worker flower` loads Flower before the app: the app wraps its parser.
    `python -m worker` never loads Flower (tests/unit/test_worker_entry_point.py)."""
    script = (
        "import sys, celery.bin.celery, worker.app;"
        "print(getattr(sys.modules['flower.utils.search']._kwargs_pairs,"
        " 'cached_by_text', False))"
    )
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
