"""Find and send the change events the results' metadata says are still owed.

A write leaves its event owed (`event_owed` in `meta:{<value key>}`) until the event is
appended; a worker that dies between the two leaves the debt, which the next claim, batch
or write of that result pays. A result nobody asks for again keeps it: this sweep, run
by an operator (`apiworker send-owed-events`) or on a schedule, pays those. It SCANs the
metadata keys (every master of a cluster) and sends each debt through the store, whose
event script appends an event once per fence: a debt a worker pays at the same moment
is not appended twice, and one overtaken by a newer write is not appended out of order.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from results.store import Owed, ResultStore

#: Metadata fields a debt is sent with.
_FIELDS = ("event_owed", "fence", "task_id", "fetched_at_ms", "removed")
#: How many metadata keys are read in one round trip.
BATCH = 500


def send_owed(store: ResultStore, *, dry_run: bool = False) -> dict[str, int]:
    """Send every owed event in `store`; returns how many were owed and appended (with
    `dry_run`, only counted). "owed" counts the debts found, "appended" the events that
    were missing: a debt whose event had been appended (only its mark was left) appends
    nothing."""
    counts: Counter[str] = Counter(owed=0) if dry_run else Counter(owed=0, appended=0)
    pattern = f"{_glob(store.keys.prefix)}meta:{{*"
    found: list[str] = []
    for raw in store.redis.scan_iter(match=pattern, count=1000):
        found.append(_text(raw))
        if len(found) >= BATCH:
            _pay(store, found, counts, dry_run)
            found = []
    _pay(store, found, counts, dry_run)
    return dict(counts)


def _pay(store: ResultStore, metas: list[str], counts: Counter[str], dry_run: bool) -> None:
    pipe = store.redis.pipeline(transaction=False)
    named = [(meta, result) for meta in metas if (result := _result_of(store, meta))]
    for meta, _ in named:
        pipe.hmget(meta, *_FIELDS)
    by_kind: dict[str, list[tuple[str, Owed]]] = defaultdict(list)
    for (_, (kind, ident)), fields in zip(named, pipe.execute() if named else [], strict=True):
        debt = Owed.parse(*fields)
        if debt is not None:
            by_kind[kind].append((ident, debt))
    for kind, owed in by_kind.items():
        counts["owed"] += len(owed)
        if not dry_run:
            counts["appended"] += store.send_owed(kind, owed)


def _result_of(store: ResultStore, meta: str) -> tuple[str, str] | None:
    """(kind, ident) of a result's metadata key `meta:{<kind>:<ident>}`; None for the
    other hashes under `meta:{` (a list page's, `meta:{article-page}:0:100`)."""
    match = _TAGGED.match(meta[len(store.keys.prefix) :])
    if match is None:
        return None
    value = match.group(1)[len(store.keys.prefix) :]
    kind, _, ident = value.partition(":")
    return (kind, ident) if ident else None


#: `meta:{<value key>}` and nothing after: the value key is the whole tag.
_TAGGED = re.compile(r"^meta:\{(.+)\}$")


def _glob(prefix: str) -> str:
    """`prefix` as a SCAN pattern matches it literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
