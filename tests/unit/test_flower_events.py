"""Flower's events reach its IO loop a batch at a time (worker/flower_events.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import flower.events  # the flower extra (make install)
import pytest
from tornado.ioloop import IOLoop

from tests.support.celery_worker import run_python
from worker import flower_events
from worker.flower_events import DRAINED_AT_ONCE, EventHandover


class _Loop:
    """An IO loop that only records the callbacks it is handed, run on demand."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def run_once(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


class _State:
    def __init__(self, fails_on: str = "") -> None:
        self.applied: list[str] = []
        self.fails_on = fails_on

    def event(self, event: dict[str, Any]) -> None:
        if event["uuid"] == self.fails_on:
            raise KeyError("hostname")
        self.applied.append(event["uuid"])


class _Events:
    def __init__(self, state: _State) -> None:
        self.io_loop = _Loop()
        self.state = state


def _event(n: int) -> dict[str, Any]:
    return {"type": "task-received", "uuid": str(n), "hostname": "worker1"}


def test_a_burst_of_events_wakes_the_loop_once_and_keeps_their_order() -> None:
    events = _Events(_State())
    handover = EventHandover(events)
    for n in range(50):
        handover.put(_event(n))
    assert len(events.io_loop.callbacks) == 1
    events.io_loop.run_once()
    assert events.state.applied == [str(n) for n in range(50)]
    assert events.io_loop.callbacks == []
    handover.put(_event(50))  # after a drain, the next event wakes the loop again
    assert len(events.io_loop.callbacks) == 1


def test_a_long_burst_is_applied_over_several_turns_of_the_loop() -> None:
    events = _Events(_State())
    handover = EventHandover(events)
    for n in range(DRAINED_AT_ONCE * 2 + 1):
        handover.put(_event(n))
    turns = 0
    while events.io_loop.callbacks:
        events.io_loop.run_once()
        turns += 1
    assert turns == 3
    assert events.state.applied == [str(n) for n in range(DRAINED_AT_ONCE * 2 + 1)]


def test_an_event_flowers_state_fails_on_does_not_hold_back_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = _Events(_State(fails_on="1"))
    handover = EventHandover(events)
    for n in range(3):
        handover.put(_event(n))
    events.io_loop.run_once()
    assert events.state.applied == ["0", "2"]
    assert "Flower could not apply a task-received event" in caplog.text


def test_no_event_is_lost_when_the_receiving_thread_races_the_loop() -> None:
    """Two real threads: events put while drains run, on a real tornado IO loop."""
    state = _State()
    loop = IOLoop(make_current=False)
    events = _Events(state)
    events.io_loop = loop  # type: ignore[assignment]
    handover = EventHandover(events)
    total = 20_000
    done = threading.Event()

    def receive() -> None:
        for n in range(total):
            handover.put(_event(n))
        loop.add_callback(done.set)

    runner = threading.Thread(target=loop.start, daemon=True)
    runner.start()
    try:
        receive()
        assert done.wait(timeout=30)
        applied = threading.Event()

        def check() -> None:
            if len(state.applied) == total:
                applied.set()
            else:
                loop.call_later(0.01, check)

        loop.add_callback(check)
        assert applied.wait(timeout=30), f"{len(state.applied)} of {total} applied"
    finally:
        loop.add_callback(loop.stop)
        runner.join(timeout=10)
        loop.close()
    assert state.applied == [str(n) for n in range(total)]


@pytest.fixture
def flowers_own() -> Iterator[Any]:
    """Flower's own method put back after the test (importing the app may replace it)."""
    before = flower.events.Events.on_event
    yield before
    flower.events.Events.on_event = before


def test_the_app_installs_it_in_flowers_process_only(flowers_own: Any) -> None:
    flower.events.Events.on_event = flowers_own
    assert flower_events.install()
    assert not flower_events.install()  # once
    assert flower.events.Events.on_event is not flowers_own
    # A worker process has not loaded Flower: importing the app loads none of it.
    loaded = run_python("-c", "import sys, worker.app; print('flower.events' in sys.modules)")
    assert loaded.stdout.strip() == "False"
    # Flower's process: its modules first, then the app, as `celery -A worker flower` does.
    replaced = run_python(
        "-c",
        "import flower.events as e; original = e.Events.on_event; import worker.app; "
        "print(e.Events.on_event is not original)",
    )
    assert replaced.stdout.strip() == "True"
