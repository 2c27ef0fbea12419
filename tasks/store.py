"""Atomic writes of results, their metadata and their change event; fresh reads.

One Lua script writes the value, replaces the metadata hash and appends the stream event
together, so a reader never sees a value without its metadata, and it refuses a result
fetched earlier than the one already stored, so a late, older job cannot overwrite a
newer result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from tasks.keys import Keys
from tasks.outcome import note_result_key

# KEYS: value, meta, events stream, alias hash, single-flight lock
# ARGV: value, fetched_at_ms, stream maxlen, kind, ident, task_id, alias field ('' for
# none), lock token ('' for none), meta pairs...
# The lock is given up in the same call, whether or not the write is refused.
_WRITE = """
if ARGV[8] ~= '' and redis.call('GET', KEYS[5]) == ARGV[8] then
    redis.call('DEL', KEYS[5])
end
local stored = redis.call('HGET', KEYS[2], 'fetched_at_ms')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
    return 0
end
local changed = redis.call('GET', KEYS[1]) ~= ARGV[1] and '1' or '0'
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'fetched_at_ms', ARGV[2], unpack(ARGV, 9))
if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[4], ARGV[7], ARGV[5])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
    'key', KEYS[1], 'kind', ARGV[4], 'id', ARGV[5], 'task_id', ARGV[6],
    'fetched_at_ms', ARGV[2], 'changed', changed)
return 1
"""


# KEYS: value, meta, lock. ARGV: fresh_since_ms, lock token, lock ttl ms.
# One round trip answers "is there a fresh value?" and, if not, "may I fetch it?".
_CLAIM = """
local stored = redis.call('HGET', KEYS[2], 'fetched_at_ms')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
    local value = redis.call('GET', KEYS[1])
    if value then
        return {'fresh', value}
    end
end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
    return {'owner'}
end
return {'wait', redis.call('PTTL', KEYS[3])}
"""

# Extend a lease only while we still hold it; 0 when it expired and was taken over.
# KEYS: lock. ARGV: token, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Delete a lock only if we still hold it (it may have expired and been taken over).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """The answer of `ResultStore.claim`: a fresh value, the lock, or neither."""

    state: str  # "fresh", "owner" or "wait"
    value: Any = None
    #: With "wait": seconds until the holder's lease runs out unless it is renewed.
    lease_left: float = 0.0


@dataclass(frozen=True)
class Fetched:
    """A transformed result with what the metadata hash records about it."""

    kind: str
    ident: str
    value: Any
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None
    #: Another name of the same result (a Pokémon id), kept in `index:pokemon-ids`.
    alias: str | None = None


class ResultStore:
    """Reads and writes results in the documented keys of one Redis."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, events_maxlen: int, failures_maxlen: int
    ) -> None:
        self.redis = client
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.failures_maxlen = failures_maxlen
        self._write = client.register_script(_WRITE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def write(
        self, result: Fetched, task_id: str, *, release: tuple[str, str] | None = None
    ) -> bool:
        """Store one result atomically; False when a newer one was already there.

        `release` is a single-flight lock (key, token) to give up in the same call. One
        script call, not a pipeline: redis-py asks `SCRIPT EXISTS` before every pipeline
        that runs a script, a round trip more per job.
        """
        note_result_key(self.keys.result(result.kind, result.ident))
        return bool(self._write(**self._write_args(result, task_id, release)))

    def write_many(self, results: list[Fetched], task_id: str) -> int:
        """Store several results in one round trip; each write stays atomic."""
        pipe = self.redis.pipeline(transaction=False)
        for result in results:
            note_result_key(self.keys.result(result.kind, result.ident))
            self._write(client=pipe, **self._write_args(result, task_id))
        return sum(1 for written in pipe.execute() if written)

    def claim(self, kind: str, ident: str, *, fresh_since: float, token: str, ttl: float) -> Claim:
        """A value fetched at or after `fresh_since`, else the fetch lock, else "wait"."""
        keys = [
            self.keys.result(kind, ident),
            self.keys.meta(kind, ident),
            self.keys.lock(kind, ident),
        ]
        answer = self._claim(keys=keys, args=[int(fresh_since * 1000), token, int(ttl * 1000)])
        state = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
        if state == "fresh":
            note_result_key(keys[0])
            return Claim(state, orjson.loads(answer[1]))
        if state == "wait":
            return Claim(state, lease_left=max(int(answer[1]), 0) / 1000)
        return Claim(state)

    def renew(self, leases: Mapping[str, str], ttl: float) -> list[str]:
        """Extend every lease (lock key -> token) still held, in one round trip; returns
        the keys that were lost (expired and taken over) and must not be renewed again."""
        pipe = self.redis.pipeline(transaction=False)
        keys = list(leases)
        for key in keys:
            self._renew(keys=[key], args=[leases[key], int(ttl * 1000)], client=pipe)
        return [key for key, kept in zip(keys, pipe.execute(), strict=True) if not kept]

    def release(self, lock_key: str, token: str) -> None:
        """Give up a fetch lock (after a failed fetch) so waiters stop waiting."""
        self._release(keys=[lock_key], args=[token])

    def _write_args(
        self, result: Fetched, task_id: str, release: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        alias = result.alias
        lock_key, lock_token = release or (self.keys.lock(result.kind, result.ident), "")
        keys = [
            self.keys.result(result.kind, result.ident),
            self.keys.meta(result.kind, result.ident),
            self.keys.events,
            self.keys.pokemon_ids,
            lock_key,
        ]
        meta: list[str] = ["task_id", task_id]
        if result.etag:
            meta += ["etag", result.etag]
        if result.last_modified:
            meta += ["last_modified", result.last_modified]
        args = [
            orjson.dumps(result.value),
            int(result.fetched_at * 1000),
            self.events_maxlen,
            result.kind,
            result.ident,
            task_id,
            alias or "",
            lock_token,
            *meta,
        ]
        return {"keys": keys, "args": args}

    def read(self, kind: str, ident: str) -> tuple[Any, float] | None:
        """The stored value and its fetch time (epoch seconds), or None."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.result(kind, ident))
        pipe.hget(self.keys.meta(kind, ident), "fetched_at_ms")
        raw, fetched_ms = pipe.execute()
        if raw is None or fetched_ms is None:
            return None
        return orjson.loads(raw), int(fetched_ms) / 1000

    def read_fresh(self, kind: str, ident: str, *, newer_than: float) -> Any | None:
        """The stored value when it was fetched after `newer_than`, else None."""
        found = self.read(kind, ident)
        if found is None or found[1] < newer_than:
            return None
        note_result_key(self.keys.result(kind, ident))
        return found[0]

    def fresh_idents(self, kind: str, idents: list[str], *, newer_than: float) -> set[str]:
        """Which of `idents` have a result fetched after `newer_than`, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for ident in idents:
            pipe.hget(self.keys.meta(kind, ident), "fetched_at_ms")
        cutoff = newer_than * 1000
        return {
            ident
            for ident, fetched_ms in zip(idents, pipe.execute(), strict=True)
            if fetched_ms is not None and int(fetched_ms) >= cutoff
        }

    def pokemon_name_for_id(self, pokemon_id: str) -> str | None:
        name = self.redis.hget(self.keys.pokemon_ids, pokemon_id)
        return name.decode() if isinstance(name, bytes) else name

    def record_failure(self, record: Mapping[str, str]) -> str:
        """Append a permanent failure to the failure stream; returns the entry id."""
        entry = self.redis.xadd(
            self.keys.failures,
            dict(record),  # type: ignore[arg-type]
            maxlen=self.failures_maxlen,
            approximate=True,
        )
        return entry.decode() if isinstance(entry, bytes) else str(entry)


def now() -> float:
    return time.time()
