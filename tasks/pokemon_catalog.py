"""The catalog refresh's batch path: many names per job, fetched concurrently.

A job per name pays Celery's per-message cost (publish, deliver, ack, result backend)
for every name; a batch pays it once per few dozen names, fetches them on a few threads
and writes all results in one Redis pipeline. The guarantees stay per name: each result
is written atomically with its event and never over a newer one, a permanent failure is
recorded as a failure of `tasks.pokemon.fetch_pokemon(name)` (so it can be replayed by
itself), and a transient one is handed to a single `fetch_pokemon` job with its own
retries.

A stored name is revalidated: its validators are read with the freshness check (the
same round trip), its fetch is conditional, and a `304` brings the stored result forward
in the same pipeline as the writes, with its own `revalidated=1` event. A stored name
whose metadata says its change event is still owed has it sent first, fresh or not.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from apis import PokeAPI
from apis.errors import UpstreamError
from results.failure_record import failure_record
from results.outcome import note_revalidation
from results.runtime import Runtime
from results.store import Fetched, Freshness, Unchanged, now
from tasks.errors import InvalidInput, InvalidPayload
from tasks.pokemon_record import pokemon_summary

log = logging.getLogger("tasks.catalog")

SINGLE_TASK = "tasks.pokemon.fetch_pokemon"
KIND = "pokemon"


@dataclass
class BatchOutcome:
    """What became of each name of a batch."""

    stored: list[str] = field(default_factory=list)
    revalidated: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "stored": len(self.stored),
            "revalidated": len(self.revalidated),
            "fresh": len(self.fresh),
            "failed": len(self.failed),
            "deferred": len(self.deferred),
        }


def refresh_batch(
    names: list[str],
    task_id: str,
    *,
    runtime: Runtime,
    client: PokeAPI,
    concurrency: int,
    defer: Callable[[str], object],
) -> BatchOutcome:
    """Fetch, transform and store every name of `names` (already validated, by name)."""
    store = runtime.store
    outcome = BatchOutcome()
    settings = runtime.settings
    freshness = Freshness(settings.freshness_max_age, settings.upstream_max_age)
    # Redis's time, the stored metadata and a fence per name, before any fetch: a result
    # fetched here is refused over one a later fetch stored (results/store.py).
    batch = store.begin_many(KIND, names)
    started, stored = batch.started, batch.stored
    fresh = {
        name
        for name, meta in stored.items()
        if meta.stored_at >= started - freshness.window(meta.max_age)
    }
    outcome.fresh = [name for name in names if name in fresh]
    wanted = [name for name in names if name not in fresh]
    # A stored name whose event its writer never sent (it died; this batch may be that
    # very job run again): sent now, before fetches that may fail and write nothing.
    owed = [(name, debt) for name, known in stored.items() if (debt := known.owed) is not None]
    if owed:
        store.send_owed(KIND, owed)

    def fetch(name: str) -> Fetched | Unchanged | BaseException:
        known = stored.get(name)
        try:
            validators = known.validators if known is not None else None
            payload = client.get_pokemon(name, validators=validators)
            fence = batch.fences.get(name, 0)
            if payload.not_modified:
                return Unchanged(
                    KIND, name, now(), payload.etag, payload.last_modified, payload.max_age,
                    fence=fence,
                )  # fmt: skip
            summary = pokemon_summary(payload.data)
        except (UpstreamError, InvalidPayload, InvalidInput) as exc:
            return exc
        return Fetched(
            KIND, summary["name"], summary, now(), payload.etag, payload.last_modified,
            alias=str(summary["id"]), max_age=payload.max_age,
            # The fence is the asked name's; one stored under another name takes its own.
            fence=fence if summary["name"] == name else 0,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(wanted)))) as pool:
        # Each fetch runs in a copy of the job's context, so its upstream spans are the
        # job span's children (a pool thread starts with an empty context).
        futures = [pool.submit(contextvars.copy_context().run, fetch, name) for name in wanted]
        fetched = [future.result() for future in futures]
    results: list[Fetched | Unchanged] = []
    for name, result in zip(wanted, fetched, strict=True):
        if isinstance(result, Fetched | Unchanged):
            results.append(result)
            known = stored.get(name)
            if known is not None and known.validators is not None:
                note_revalidation(modified=isinstance(result, Fetched))
        elif isinstance(result, UpstreamError) and result.is_transient:
            defer(name)
            outcome.deferred.append(name)
        else:
            record = failure_record(SINGLE_TASK, task_id, [name], {}, result, 1)
            runtime.failures.record(store.record_failure, record)
            outcome.failed.append(name)
    if results:
        applied = store.apply_many(results, task_id)
        for result, applied_as in zip(results, applied, strict=True):
            if applied_as == "gone":  # the stored value vanished: fetch it whole alone
                defer(result.ident)
                outcome.deferred.append(result.ident)
            elif isinstance(result, Unchanged):
                outcome.revalidated.append(result.ident)
            else:
                outcome.stored.append(result.ident)
    return outcome
