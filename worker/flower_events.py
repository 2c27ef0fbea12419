"""Flower's events handed to its IO loop a batch at a time, not one wake-up per event.

Flower (2.2) receives events on a thread of its own and hands each one to its tornado
IO loop (`flower.events.Events.on_event`: `io_loop.add_callback`), which wakes the loop
through asyncio's self-pipe: a write on the receiving thread and a read on the loop for
every event, three a job here (received, started, succeeded). In a profile of Flower's
process during the bench's small-body jobs, those wake-ups were about a fifth of its
busy samples (docs/performance.md, "Flower's events a batch at a time").

Here the receiving thread appends each event to a queue and wakes the loop only when no
drain is already scheduled; the loop then applies every queued event in arrival order,
at most `DRAINED_AT_ONCE` before it lets other callbacks (Flower's pages) run. Flower
applies them with its own `state.event`, so its task list, search and metrics are as
before, and an event that Flower's state fails on is logged, as tornado logs a failing
callback, without holding back the ones after it. Flower has no setting for it; the
wrapper replaces the one method, on a release bounded in pyproject.toml (below 2.3).

`celery -A worker flower` imports Flower's modules before it loads this app, so the app
installs this when it finds Flower's events module loaded; a worker process has no
Flower and nothing is installed.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any

EVENTS_MODULE = "flower.events"
# Events applied per turn of the IO loop: a burst of thousands still lets Flower's pages
# answer between batches.
DRAINED_AT_ONCE = 256

log = logging.getLogger(__name__)


class EventHandover:
    """Events from Flower's receiving thread to its IO loop, one wake-up per batch.

    Lock-free under the GIL: `deque.append` and `popleft` are atomic, and the drain
    clears `scheduled` before it empties the queue, so an event appended after the
    drain's last look finds `scheduled` false and schedules the next drain itself.
    """

    def __init__(self, events: Any) -> None:
        self._events = events  # Flower's Events thread: its io_loop and its state
        self._pending: deque[dict[str, Any]] = deque()
        self.scheduled = False

    def put(self, event: dict[str, Any]) -> None:
        """Called on the receiving thread for each event."""
        self._pending.append(event)
        if not self.scheduled:
            self.scheduled = True
            self._events.io_loop.add_callback(self.drain)

    def drain(self) -> None:
        """Called on the IO loop: apply the queued events, in order."""
        self.scheduled = False
        pending = self._pending
        for _ in range(DRAINED_AT_ONCE):
            if not pending:
                return
            event = pending.popleft()
            try:
                self._events.state.event(event)
            except Exception:
                log.exception("Flower could not apply a %s event", event.get("type"))
        if pending and not self.scheduled:  # more than one batch: the rest on the next turn
            self.scheduled = True
            self._events.io_loop.add_callback(self.drain)


def _on_event(self: Any, event: dict[str, Any]) -> None:
    handover = self.__dict__.get("_handover")
    if handover is None:  # first event, on the receiving thread, the only caller
        handover = self.__dict__["_handover"] = EventHandover(self)
    handover.put(event)


def install() -> bool:
    """Replace Flower's per-event hand-over; False when Flower's events are not loaded."""
    events = sys.modules.get(EVENTS_MODULE)
    thread_class = getattr(events, "Events", None)
    original = getattr(thread_class, "on_event", None)
    if thread_class is None or original is None or original is _on_event:
        return False
    thread_class.on_event = _on_event
    return True
