"""Failure records that outlive a Redis outage: kept in the process, written later.

A permanent failure must leave a record (README: nothing is lost). When the failure
stream cannot take it (Redis away, failing over), the record is kept in a bounded
buffer of this process and written, oldest first, as soon as Redis answers again: by the
next failure this process records, or by a background thread that tries every
`RETRY_SECONDS` while the buffer is not empty. A full buffer drops its oldest record,
logged and counted (`apiworker_failures_dropped_total`), so memory stays bounded.

Hand-written rather than a library: the buffer is a `collections.deque` with a
`maxlen`, and the retry one daemon thread; nothing more is needed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping

from telemetry.metrics import FAILURES_BUFFERED, FAILURES_DROPPED

log = logging.getLogger("tasks")

#: How often a non-empty buffer tries Redis again.
RETRY_SECONDS = 2.0

Writer = Callable[[Mapping[str, str]], object]


class FailureBuffer:
    """Records the failure stream could not take yet, `size` at most, oldest first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending: deque[tuple[Writer, Mapping[str, str]]] = deque()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Never set: the retry thread waits on it with a timeout, between attempts.
        self._wake = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def record(self, write: Writer, record: Mapping[str, str]) -> bool:
        """Write `record` with `write` (after any kept before it); keep it when that
        fails. Returns True when it was written now."""
        self.flush()
        try:
            write(record)
        except Exception as exc:
            self._keep(write, record, exc)
            return False
        return True

    def flush(self) -> int:
        """Write the kept records, oldest first, until one fails; returns how many."""
        written = 0
        with self._flushing:
            while True:
                with self._lock:
                    if not self._pending:
                        return written
                    write, record = self._pending[0]
                try:
                    write(record)
                except Exception:
                    return written
                with self._lock:
                    if self._pending and self._pending[0][1] is record:
                        self._pending.popleft()
                written += 1
                log.info("failure record written after Redis answered again task_id=%s",
                         record.get("task_id", ""))  # fmt: skip

    def _keep(self, write: Writer, record: Mapping[str, str], exc: Exception) -> None:
        if self.size <= 0:
            FAILURES_DROPPED.inc()
            log.error("failure record lost (no buffer) task_id=%s error=%s",
                      record.get("task_id", ""), type(exc).__name__)  # fmt: skip
            return
        with self._lock:
            if len(self._pending) >= self.size:
                dropped = self._pending.popleft()[1]
                FAILURES_DROPPED.inc()
                log.error("failure record lost, the buffer of %d is full task_id=%s",
                          self.size, dropped.get("task_id", ""))  # fmt: skip
            self._pending.append((write, record))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._retry, name="failure-records", daemon=True
                )
                self._thread.start()
        FAILURES_BUFFERED.inc()
        log.warning("failure record kept until Redis answers task_id=%s error=%s",
                    record.get("task_id", ""), type(exc).__name__)  # fmt: skip

    def _retry(self) -> None:
        while True:
            self._wake.wait(RETRY_SECONDS)
            self.flush()
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
