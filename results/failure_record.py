"""The failure record's shape: the fields a permanent failure leaves in the failure stream.

Every text is redacted (telemetry.redact), so a token in an argument or an error message
never reaches Redis; the job's arguments are kept as JSON, so `apiworker failures replay` can send
the job again. A hostile argument cannot make a record huge: long strings and lists are
shortened as the record is built (`failure_record`, marked `truncated=1`), and the whole
record is held to FAILURE_RECORD_MAX_BYTES as it is written (`capped`, used by the store).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from telemetry.redact import redact

MAX_RECORDED_STRING = 1024
MAX_RECORDED_ITEMS = 1000


def _bounded(value: Any, cut: list[bool], depth: int = 0) -> Any:
    """`value` with long strings and lists shortened, so a hostile 1 MB argument costs
    a failure record a few KB; `cut` notes that something was shortened."""
    if isinstance(value, str) and len(value) > MAX_RECORDED_STRING:
        cut.append(True)
        return value[:MAX_RECORDED_STRING]
    if depth > 5:
        return value if isinstance(value, str | int | float | bool | None) else repr(value)[:80]
    if isinstance(value, list | tuple):
        if len(value) > MAX_RECORDED_ITEMS:
            cut.append(True)
        return [_bounded(item, cut, depth + 1) for item in value[:MAX_RECORDED_ITEMS]]
    if isinstance(value, dict):
        return {str(key)[:100]: _bounded(item, cut, depth + 1) for key, item in value.items()}
    return value


def failure_record(
    task: str, task_id: str, args: Any, kwargs: Any, exc: BaseException, attempts: int
) -> dict[str, str]:
    """The failure stream's fields; every text is redacted, arguments kept for replay
    (shortened, and marked `truncated`, when they are huge)."""
    cut: list[bool] = []
    bounded_args = _bounded(list(args or []), cut)
    bounded_kwargs = _bounded(dict(kwargs or {}), cut)
    return {
        "task": task,
        "task_id": task_id or "",
        "args": redact(orjson.dumps(bounded_args, default=str).decode()),
        "kwargs": redact(orjson.dumps(bounded_kwargs, default=str).decode()),
        "truncated": "1" if cut else "0",
        "error": type(exc).__name__,
        "message": redact(str(exc))[:500],
        "status": str(getattr(exc, "status", "") or ""),
        "attempts": str(attempts),
        "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def capped(record: Mapping[str, str], max_bytes: int) -> dict[str, str]:
    """`record` within `max_bytes` (UTF-8, names and values), its longest values cut first.

    A cut value ends with `...[cut]`, and the record says `truncated=1`: the arguments
    of such a record are no longer JSON, so it cannot be replayed as it is.
    """
    fields = dict(record)

    def size() -> int:
        return sum(len(k.encode()) + len(v.encode()) for k, v in fields.items())

    marker = "...[cut]"
    while size() > max_bytes:
        name = max(fields, key=lambda key: len(fields[key].encode()))
        value = fields[name]
        excess = size() - max_bytes + len(marker)
        keep = max(0, len(value.encode()) - excess)
        if keep == 0 or len(value) <= len(marker):
            fields[name] = ""
        else:
            fields[name] = value.encode()[:keep].decode(errors="ignore") + marker
        fields["truncated"] = "1"
        if all(len(v) <= len(marker) for v in fields.values()):
            break
    return fields
