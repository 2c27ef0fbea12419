"""Celery's exception info shares each function's code positions (worker/exception_info.py)."""

from __future__ import annotations

import pickle
import sys
import traceback
from types import TracebackType

from billiard.einfo import ExceptionInfo

import worker.app  # noqa: F401  (installs the sharing, as a worker process does)
from worker.exception_info import shared_positions


class _Boom(Exception):
    pass


def _deep(level: int) -> None:
    if level == 0:
        raise _Boom("no token within the wait bound")
    _deep(level - 1)


def _exception_info() -> tuple[ExceptionInfo, TracebackType]:
    try:
        _deep(3)
    except _Boom:
        info = ExceptionInfo()
        _, _, tb = sys.exc_info()
        assert tb is not None
        return info, tb
    raise AssertionError("unreachable")


def _codes(info: ExceptionInfo) -> list[object]:
    codes = []
    frame = info.tb
    while frame is not None and hasattr(frame, "tb_frame"):
        codes.append(frame.tb_frame.f_code)
        frame = frame.tb_next
    return codes


def test_two_retries_through_the_same_functions_share_one_copy_of_their_positions() -> None:
    """The bytes a retry's traceback copy costs do not grow with each instruction of
    every function on the stack: a second copy reuses the first's positions."""
    first, _ = _exception_info()
    second, _ = _exception_info()
    pairs = list(zip(_codes(first), _codes(second), strict=True))
    assert len(pairs) == 5  # _exception_info, four levels of _deep
    for one, other in pairs:
        assert one._co_positions is other._co_positions  # type: ignore[attr-defined]


def test_the_shared_positions_are_the_ones_python_gives() -> None:
    code = _deep.__code__
    assert list(shared_positions(code)) == list(code.co_positions())
    info, _ = _exception_info()
    copied = _codes(info)[-1]
    assert list(copied.co_positions()) == list(code.co_positions())  # type: ignore[attr-defined]


def test_the_copy_still_formats_like_the_traceback_and_pickles() -> None:
    """What billiard keeps the copy for: formatting it (with 3.11's carets) and pickling."""
    info, tb = _exception_info()
    assert traceback.format_tb(info.tb) == traceback.format_tb(tb)  # type: ignore[arg-type]
    again = pickle.loads(pickle.dumps(info.tb))
    assert traceback.format_tb(again) == traceback.format_tb(tb)
    assert "no token within the wait bound" in info.traceback
