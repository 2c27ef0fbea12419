"""Atomic writes of results, their metadata and their change event; fresh reads.

One Lua script writes the value, replaces the metadata hash and appends the stream event
together, so a reader never sees a value without its metadata.

Order comes from fences, not clocks. Every fetch takes a fence before it asks the
upstream: the single-flight claim takes one with its lock, a batch one per name, both
from the result's own counter (`fence:{kind}:{id}`, INCR), so a later fetch always has a
higher fence. The write script refuses a fence lower than the stored one: a late, older
job cannot overwrite a newer result, even one whose lease lapsed while it fetched.
Freshness is judged on the results Redis's clock too (`stored_ms`, the script's `TIME`;
a job's start is its first claim's `TIME`); `fetched_at_ms`, the worker's clock, is kept
as information only.

Every script is safe to send twice (redis-py sends a command again after a lost reply):
a claim finds its own token in the lock and answers as before; a write or revalidation
whose fence and task are already stored changes nothing and appends no event.

A revalidation (the upstream answered `304 Not Modified` to the stored validators) is
another script with the same guarantees: the value is left as it is, the metadata is
brought forward (fetch time, task, the validators the 304 carried) and the stream gets
an entry with `changed=0` and `revalidated=1`. When the value is gone, the lock is kept
for the caller's whole fetch.

Where the results Redis has replicas, each write waits for one (tasks/replicas.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.commands.core import Script

from apis.conditional import Validators
from tasks.keys import Keys
from tasks.lease import Leases
from tasks.outcome import note_result_key
from tasks.replicas import ReplicaWait
from telemetry import tracing

# Shared by the scripts below. The results Redis's clock in epoch ms: ordering and
# freshness are judged on it, never on a worker's (Redis 7 replicates a script's
# effects, so TIME is allowed before a write).
_NOW = """
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# A fence of 0 means the caller took none: one is taken here, at the write (a write
# ordered by its arrival). A counter that was lost (its key evicted, a restore) starts
# again above the stored result's fence (`stored`, which each caller has already read),
# so fences only ever grow for one result.
_FENCE = """
local function next_fence(fence_key, stored)
    local fence = redis.call('INCR', fence_key)
    if stored >= fence then
        fence = stored + 1
        redis.call('SET', fence_key, fence)
    end
    return fence
end
"""

# KEYS: value, meta, events stream, alias hash, single-flight lock, fence counter
# ARGV: value, fetched_at_ms, stream maxlen, kind, ident, task_id, alias field ('' for
# none), lock value ('' for none), fence (0: take one now), meta pairs...
# The lock is given up in the same call, whether or not the write is refused.
# Returns 1 when written (or when this very write was already applied: a replay after a
# lost reply changes nothing and appends no second event), 0 when a result of a higher
# fence was there.
_WRITE = (
    _NOW
    + _FENCE
    + """
if ARGV[8] ~= '' and redis.call('GET', KEYS[5]) == ARGV[8] then
    redis.call('DEL', KEYS[5])
end
local fence = tonumber(ARGV[9])
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if fence > 0 and stored == fence and redis.call('HGET', KEYS[2], 'task_id') == ARGV[6] then
    return 1
end
if fence == 0 then
    fence = next_fence(KEYS[6], stored)
end
if stored > fence then
    return 0
end
local changed = redis.call('GET', KEYS[1]) ~= ARGV[1] and '1' or '0'
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'fetched_at_ms', ARGV[2], 'stored_ms', now_ms(), 'fence', fence,
    unpack(ARGV, 10))
if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[4], ARGV[7], ARGV[5])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
    'key', KEYS[1], 'kind', ARGV[4], 'id', ARGV[5], 'task_id', ARGV[6],
    'fetched_at_ms', ARGV[2], 'changed', changed, 'revalidated', '0', 'fence', fence)
return 1
"""
)

# KEYS: value, meta, events stream, single-flight lock, fence counter
# ARGV: fetched_at_ms, stream maxlen, kind, ident, task_id, lock value ('' for none),
# etag, last_modified, max_age ('' for each one the 304 did not carry), fence (0: take
# one now)
# Returns {1, value} when brought forward (or already brought forward by this very call:
# a replay), {0, value} when a result of a higher fence was there, {-1} when the value
# is gone: the lock is then kept, for the caller's whole fetch and its write.
_REVALIDATE = (
    _NOW
    + _FENCE
    + """
local value = redis.call('GET', KEYS[1])
if not value then
    return {-1}
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) == ARGV[6] then
    redis.call('DEL', KEYS[4])
end
local fence = tonumber(ARGV[10])
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if fence > 0 and stored == fence and redis.call('HGET', KEYS[2], 'task_id') == ARGV[5] then
    return {1, value}
end
if fence == 0 then
    fence = next_fence(KEYS[5], stored)
end
if stored > fence then
    return {0, value}
end
redis.call('HSET', KEYS[2], 'fetched_at_ms', ARGV[1], 'stored_ms', now_ms(), 'fence', fence,
    'task_id', ARGV[5])
if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[2], 'etag', ARGV[7])
end
if ARGV[8] ~= '' then
    redis.call('HSET', KEYS[2], 'last_modified', ARGV[8])
end
if ARGV[9] ~= '' then
    redis.call('HSET', KEYS[2], 'max_age', ARGV[9])
else
    redis.call('HDEL', KEYS[2], 'max_age')
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
    'key', KEYS[1], 'kind', ARGV[3], 'id', ARGV[4], 'task_id', ARGV[5],
    'fetched_at_ms', ARGV[1], 'changed', '0', 'revalidated', '1', 'fence', fence)
return {1, value}
"""
)


# KEYS: value, meta, lock, fence counter. ARGV: started_ms ('' for now: the job's first
# claim), window_ms, lock token, lock ttl ms, upstream window cap ms ('' when the window
# does not follow the upstream's max-age).
# One round trip answers "is there a fresh value?" and, if not, "may I fetch it?", and
# gives the owner a fence and the stored copy's validators for a conditional fetch.
# Times are Redis's: a value is fresh when Redis stored it within the window before the
# job began (`stored_ms`; results written before fences existed have only
# `fetched_at_ms`). The lock's value is "token|fence": a claim sent again after its reply
# was lost finds its own token and is the owner again, with the same fence.
# Returns {'fresh', started_ms, value}, {'owner', started_ms, fence, etag, last_modified}
# or {'wait', started_ms, lease ms left}.
_CLAIM = (
    _NOW
    + _FENCE
    + """
local started = ARGV[1] == '' and now_ms() or tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'stored_ms', 'fetched_at_ms', 'fence')
local stored = meta[1] or meta[2]
local value = redis.call('GET', KEYS[1])
if stored and value then
    local window = tonumber(ARGV[2])
    if ARGV[5] ~= '' then
        local upstream = redis.call('HGET', KEYS[2], 'max_age')
        if upstream then
            window = math.min(tonumber(upstream) * 1000, tonumber(ARGV[5]))
        end
    end
    if tonumber(stored) >= started - window then
        return {'fresh', started, value}
    end
end
local held = redis.call('GET', KEYS[3])
local mine = ARGV[3] .. '|'
local fence
if held and string.sub(held, 1, #mine) == mine then
    fence = tonumber(string.sub(held, #mine + 1))
elseif held then
    return {'wait', started, redis.call('PTTL', KEYS[3])}
else
    fence = next_fence(KEYS[4], tonumber(meta[3] or '0'))
    redis.call('SET', KEYS[3], mine .. fence, 'PX', ARGV[4])
end
if value then
    local validators = redis.call('HMGET', KEYS[2], 'etag', 'last_modified')
    return {'owner', started, fence, validators[1] or '', validators[2] or ''}
end
return {'owner', started, fence, '', ''}
"""
)

# KEYS: value, meta, fence counter, events stream. ARGV: stream maxlen, kind, ident,
# tombstone ttl ms.
# A result whose upstream item is gone (an article no longer listed): its value is
# removed and a `removed=1` event says so. Its metadata becomes a tombstone (the fence,
# for a while) so that a late write of the item, fetched before the removal, is refused.
_REMOVE = (
    _NOW
    + _FENCE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
local fence = next_fence(KEYS[3], tonumber(redis.call('HGET', KEYS[2], 'fence') or '0'))
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'fence', fence, 'stored_ms', now_ms(), 'removed', '1')
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*',
    'key', KEYS[1], 'kind', ARGV[2], 'id', ARGV[3], 'task_id', '',
    'fetched_at_ms', '', 'changed', '1', 'revalidated', '0', 'fence', fence, 'removed', '1')
return 1
"""
)


@dataclass(frozen=True)
class Freshness:
    """How long a stored result is served without asking the upstream.

    `max_age` is FRESHNESS_MAX_AGE; `upstream_cap`, when set, lets a result the upstream
    gave a `Cache-Control` lifetime use that instead, up to the cap (FRESHNESS_FROM_UPSTREAM
    and FRESHNESS_UPSTREAM_MAX_AGE). The claim script applies the same rule in Redis.
    """

    max_age: float
    upstream_cap: float | None = None

    def window(self, upstream_max_age: float | None) -> float:
        if self.upstream_cap is None or upstream_max_age is None:
            return self.max_age
        return min(upstream_max_age, self.upstream_cap)


@dataclass(frozen=True)
class Claim:
    """The answer of `ResultStore.claim`: a fresh value, the lock, or neither.

    The owner also gets the stored copy's validators (None when nothing is stored) and
    a fence: a number the key's counter gives each fetch, higher for each later one.
    """

    state: str  # "fresh", "owner" or "wait"
    #: When the job began, on the results Redis's clock (epoch seconds): the claim's own
    #: `TIME` on a job's first claim, so that its later claims and deferrals keep it.
    started: float
    value: Any = None
    validators: Validators | None = None
    #: With "wait": seconds until the holder's lease runs out unless it is renewed.
    lease_left: float = 0.0
    #: With "owner": this fetch's fence; its write is refused under a higher one.
    fence: int = 0
    #: With "owner": the lock's value (`token|fence`), which renews and releases it.
    lock_value: str = ""


@dataclass(frozen=True)
class Stored:
    """What the metadata says about one stored result (the batch path reads many)."""

    #: When Redis stored it (its `stored_ms`, epoch seconds on Redis's clock).
    stored_at: float
    max_age: float | None
    validators: Validators | None


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
    #: The upstream's freshness lifetime (`Cache-Control`), kept as meta `max_age`.
    max_age: float | None = None
    #: The fence taken when this fetch began (0: none, one is taken at the write).
    fence: int = 0


@dataclass(frozen=True)
class Unchanged:
    """A `304 Not Modified` to the stored validators: the stored value is still current."""

    kind: str
    ident: str
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None
    max_age: float | None = None
    fence: int = 0


@dataclass(frozen=True)
class Batch:
    """`ResultStore.begin_many`'s answer: Redis's time, the stored metadata, the fences."""

    started: float
    stored: dict[str, Stored]
    fences: dict[str, int]


#: `ResultStore.revalidate` found no stored value to bring forward.
GONE = object()


@dataclass(frozen=True)
class Page:
    """One list page as last fetched: its validators, the ids it listed and the total."""

    page: str
    etag: str | None
    last_modified: str | None
    idents: list[str]
    total: int
    fetched_at: float

    @property
    def validators(self) -> Validators | None:
        validators = Validators(self.etag, self.last_modified)
        return validators if validators else None


class ResultStore:
    """Reads and writes results in the documented keys of one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        events_maxlen: int,
        failures_maxlen: int,
        lease_client: redis.Redis | None = None,
        replica_wait_ms: int = 0,
        failure_max_bytes: int = 16_384,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.failures_maxlen = failures_maxlen
        self.failure_max_bytes = failure_max_bytes
        self._write = client.register_script(_WRITE)
        self._revalidate = client.register_script(_REVALIDATE)
        self._claim = client.register_script(_CLAIM)
        self._remove = client.register_script(_REMOVE)
        #: The single-flight leases of these keys (tasks/lease.py), renewed through
        #: `lease_client` when given: one with a short timeout and no retries.
        self.leases = Leases(lease_client or client)
        #: Whether a write waits for a replica (tasks/replicas.py).
        self.replicas = ReplicaWait(client, replica_wait_ms)

    def write(
        self,
        result: Fetched,
        task_id: str,
        *,
        release: tuple[str, str] | None = None,
        fence: int | None = None,
    ) -> bool:
        """Store one result atomically; False when a result of a higher fence was there.

        `release` is a single-flight lock (key, lock value) to give up in the same call;
        `fence`, the claim's, stands for the result's own: a keyword, because a copy of
        the result (`dataclasses.replace`) cost as much as building the whole call.
        Without replicas, one script call, not a pipeline: redis-py asks `SCRIPT EXISTS`
        before every pipeline that runs a script, a round trip more per job. With
        replicas, the write and its WAIT go in one plain pipeline (`_run`).
        """
        key = self.keys.result(result.kind, result.ident)
        note_result_key(key)
        with self._span("apiworker.store.write", key, 1) as span:
            call = self._write_args(result, task_id, release, fence)
            if self.replicas.needed():
                (answer,) = self._run([(self._write, _packed(call))], wait=True)
            else:
                answer = self._write(**call)
            written = bool(answer)
            if span is not None:
                span.set_attribute("apiworker.results.written", int(written))
        return written

    def revalidate(
        self,
        result: Unchanged,
        task_id: str,
        *,
        release: tuple[str, str] | None = None,
        fence: int | None = None,
    ) -> Any:
        """Bring a stored result forward after a 304; returns the stored value (the newer
        one when a result of a higher fence was there), or `GONE` when none is stored:
        then the lock in `release` is kept, for the caller's whole fetch and write."""
        key = self.keys.result(result.kind, result.ident)
        note_result_key(key)
        with self._span("apiworker.store.revalidate", key, 1):
            call = self._revalidate_args(result, task_id, release, fence)
            if self.replicas.needed():
                (answer,) = self._run([(self._revalidate, _packed(call))], wait=True)
            else:
                answer = self._revalidate(**call)
        return _revalidated_value(answer)

    def confirm_read(self, kind: str, ident: str) -> None:
        """Before a job is acknowledged on a value another job stored: with replicas,
        wait until one has it.

        WAIT counts only its own connection's writes, so a write goes first in the same
        round trip: the result's fence counter, raised (fences only need to grow). It
        follows the value in the replication stream, so a replica that has it has the
        value too. Without replicas, nothing is sent.
        """
        if not self.replicas.needed():
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(self.keys.fence(kind, ident))
        pipe.execute_command("WAIT", 1, self.replicas.timeout_ms)  # type: ignore[no-untyped-call]
        self.replicas.check(pipe.execute(raise_on_error=False)[-1])

    def write_many(self, results: Sequence[Fetched | Unchanged], task_id: str) -> int:
        """Store several results in one round trip; each write stays atomic."""
        return sum(1 for outcome in self.apply_many(results, task_id) if outcome == "written")

    def apply_many(self, results: Sequence[Fetched | Unchanged], task_id: str) -> list[str]:
        """Write or revalidate several results in one round trip, each atomically.

        Per result: "written", "revalidated", "refused" (a newer one was there) or
        "gone" (a revalidation found no stored value: fetch it whole).

        EVALSHA in a plain pipeline: redis-py's script pipeline asks `SCRIPT EXISTS`
        first, a second round trip per batch. Only when Redis lost a script (a restart,
        SCRIPT FLUSH) is it loaded and the calls it refused sent again.
        """
        calls: list[tuple[Script, tuple[Any, ...]]] = []
        for result in results:
            note_result_key(self.keys.result(result.kind, result.ident))
            if isinstance(result, Unchanged):
                script, call = self._revalidate, self._revalidate_args(result, task_id)
            else:
                script, call = self._write, self._write_args(result, task_id)
            calls.append((script, _packed(call)))
        with self._span("apiworker.store.write", None, len(results)) as span:
            replies = self._run(calls, wait=self.replicas.needed())
            outcomes = self._outcomes(results, replies)
            if span is not None:
                span.set_attribute("apiworker.results.written", outcomes.count("written"))
                span.set_attribute("apiworker.results.revalidated", outcomes.count("revalidated"))
        return outcomes

    def _run(self, calls: Sequence[tuple[Script, tuple[Any, ...]]], *, wait: bool) -> list[Any]:
        """EVALSHA each call in one plain pipeline, WAIT for a replica after them when
        `wait`; a script Redis lost is loaded and its calls sent again."""
        replies = self._evalsha_all(calls, wait)
        lost = [index for index, reply in enumerate(replies) if _no_script(reply)]
        if lost:
            for script in {id(script): script for script, _ in calls}.values():
                self.redis.script_load(script.script)
            again = self._evalsha_all([calls[i] for i in lost], wait)
            for index, reply in zip(lost, again, strict=True):
                replies[index] = reply
        return replies

    @staticmethod
    def _outcomes(results: Sequence[Fetched | Unchanged], replies: list[Any]) -> list[str]:
        outcomes: list[str] = []
        for result, answer in zip(results, replies, strict=True):
            if isinstance(answer, Exception):
                raise answer
            if isinstance(result, Unchanged):
                status = int(answer[0])
                outcomes.append({1: "revalidated", 0: "refused"}.get(status, "gone"))
            else:
                outcomes.append("written" if answer else "refused")
        return outcomes

    def _evalsha_all(
        self, calls: Sequence[tuple[Script, tuple[Any, ...]]], wait: bool = False
    ) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for script, args in calls:
            pipe.evalsha(script.sha, *args)
        if wait:
            pipe.execute_command("WAIT", 1, self.replicas.timeout_ms)  # type: ignore[no-untyped-call]
        replies = list(pipe.execute(raise_on_error=False))
        if wait:
            self.replicas.check(replies.pop())
        return replies

    def _span(self, name: str, key: str | None, count: int) -> Any:
        """The write's span when tracing is on (telemetry.tracing), else a no-op context."""
        if not tracing.enabled():
            return tracing.NO_SPAN
        attributes: dict[str, Any] = {"apiworker.results.count": count}
        if key is not None:
            attributes["apiworker.result.key"] = key
        connection = self.redis.connection_pool.connection_kwargs
        return tracing.redis_span(name, connection, **attributes)

    def claim(
        self,
        kind: str,
        ident: str,
        *,
        started: float | None,
        freshness: Freshness,
        token: str,
        ttl: float,
    ) -> Claim:
        """A value fresh at `started` (by `freshness`), else the fetch lock, else "wait".

        `started` is on Redis's clock, as an earlier claim answered it; None on a job's
        first claim, which takes Redis's `TIME` (the answer's `started`).
        """
        keys = [
            self.keys.result(kind, ident),
            self.keys.meta(kind, ident),
            self.keys.lock(kind, ident),
            self.keys.fence(kind, ident),
        ]
        cap = "" if freshness.upstream_cap is None else int(freshness.upstream_cap * 1000)
        args: list[str | int] = [
            "" if started is None else int(started * 1000),
            int(freshness.max_age * 1000),
            token,
            int(ttl * 1000),
            cap,
        ]
        answer = self._claim(keys=keys, args=args)
        state = _text(answer[0])
        began = int(answer[1]) / 1000
        if state == "fresh":
            note_result_key(keys[0])
            return Claim(state, began, orjson.loads(answer[2]))
        if state == "owner":
            fence = int(answer[2])
            validators = Validators(_text(answer[3]) or None, _text(answer[4]) or None)
            return Claim(
                state,
                began,
                validators=validators if validators else None,
                fence=fence,
                lock_value=f"{token}|{fence}",
            )
        return Claim(state, began, lease_left=max(int(answer[2]), 0) / 1000)

    def _write_args(
        self,
        result: Fetched,
        task_id: str,
        release: tuple[str, str] | None = None,
        fence: int | None = None,
    ) -> dict[str, Any]:
        alias = result.alias
        lock_key, lock_value = release or (self.keys.lock(result.kind, result.ident), "")
        keys = [
            self.keys.result(result.kind, result.ident),
            self.keys.meta(result.kind, result.ident),
            self.keys.events,
            self.keys.pokemon_ids,
            lock_key,
            self.keys.fence(result.kind, result.ident),
        ]
        meta: list[str] = ["task_id", task_id]
        if result.etag:
            meta += ["etag", result.etag]
        if result.last_modified:
            meta += ["last_modified", result.last_modified]
        if result.max_age is not None:
            meta += ["max_age", _seconds(result.max_age)]
        args = [
            orjson.dumps(result.value),
            int(result.fetched_at * 1000),
            self.events_maxlen,
            result.kind,
            result.ident,
            task_id,
            alias or "",
            lock_value,
            result.fence if fence is None else fence,
            *meta,
        ]
        return {"keys": keys, "args": args}

    def _revalidate_args(
        self,
        result: Unchanged,
        task_id: str,
        release: tuple[str, str] | None = None,
        fence: int | None = None,
    ) -> dict[str, Any]:
        lock_key, lock_value = release or (self.keys.lock(result.kind, result.ident), "")
        keys = [
            self.keys.result(result.kind, result.ident),
            self.keys.meta(result.kind, result.ident),
            self.keys.events,
            lock_key,
            self.keys.fence(result.kind, result.ident),
        ]
        args = [
            int(result.fetched_at * 1000),
            self.events_maxlen,
            result.kind,
            result.ident,
            task_id,
            lock_value,
            result.etag or "",
            result.last_modified or "",
            "" if result.max_age is None else _seconds(result.max_age),
            result.fence if fence is None else fence,
        ]
        return {"keys": keys, "args": args}

    def remove(self, kind: str, idents: Sequence[str], *, tombstone_seconds: float) -> int:
        """Remove the results of upstream items that are gone; returns how many were there.

        Each removal is atomic with its `removed=1` event; its metadata stays as a
        tombstone for `tombstone_seconds`, so a write fetched before the removal is
        refused (its fence is lower), and then expires.
        """
        calls = [
            (
                self._remove,
                _packed(
                    {
                        "keys": [
                            self.keys.result(kind, ident),
                            self.keys.meta(kind, ident),
                            self.keys.fence(kind, ident),
                            self.keys.events,
                        ],
                        "args": [self.events_maxlen, kind, ident, int(tombstone_seconds * 1000)],
                    }
                ),
            )
            for ident in idents
        ]
        if not calls:
            return 0
        replies = self._run(calls, wait=self.replicas.needed())
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return sum(1 for reply in replies if reply)

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
        stored = self.stored_many(kind, idents)
        return {ident for ident, meta in stored.items() if meta.stored_at >= newer_than}

    def stored_many(self, kind: str, idents: list[str]) -> dict[str, Stored]:
        """The metadata of each stored result of `idents`, in one round trip."""
        return self.begin_many(kind, idents, fences=False).stored

    def begin_many(self, kind: str, idents: list[str], *, fences: bool = True) -> Batch:
        """What a batch needs before it fetches, in one round trip: Redis's time (its
        start), each stored result's metadata and, with `fences`, a fence per ident.

        Only results whose value exists are given: a 304 can only bring forward a value
        that is there, and only such a value can be served as fresh. Fences are taken
        for every ident, fresh or not: a fence nobody writes with costs nothing.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for ident in idents:
            pipe.hmget(
                self.keys.meta(kind, ident),
                "stored_ms", "fetched_at_ms", "max_age", "etag", "last_modified",
            )  # fmt: skip
            pipe.exists(self.keys.result(kind, ident))
            if fences:
                pipe.incr(self.keys.fence(kind, ident))
        answers = pipe.execute()
        seconds, micros = answers[0]
        step = 3 if fences else 2
        found: dict[str, Stored] = {}
        taken: dict[str, int] = {}
        for index, ident in enumerate(idents):
            at = 1 + step * index
            stored_ms, fetched_ms, max_age, etag, last_modified = answers[at]
            if fences:
                taken[ident] = int(answers[at + 2])
            stamp = stored_ms if stored_ms is not None else fetched_ms
            if stamp is None or not answers[at + 1]:
                continue
            validators = Validators(_text(etag) or None, _text(last_modified) or None)
            found[ident] = Stored(
                stored_at=int(stamp) / 1000,
                max_age=float(max_age) if max_age is not None else None,
                validators=validators if validators else None,
            )
        return Batch(started=int(seconds) + int(micros) / 1e6, stored=found, fences=taken)

    def read_page(self, kind: str, page: str) -> Page | None:
        """The stored validators and ids of one list page, or None."""
        raw = self.redis.hgetall(self.keys.page(kind, page))
        fields = {_text(key): _text(value) for key, value in raw.items()}
        if "ids" not in fields or "fetched_at_ms" not in fields:
            return None
        return Page(
            page=page,
            etag=fields.get("etag") or None,
            last_modified=fields.get("last_modified") or None,
            idents=list(orjson.loads(fields["ids"])),
            total=int(fields.get("total", 0)),
            fetched_at=int(fields["fetched_at_ms"]) / 1000,
        )

    def write_pages(self, kind: str, pages: Sequence[Page]) -> None:
        """Keep each page's validators and ids (after its results are stored)."""
        pipe = self.redis.pipeline(transaction=True)
        for page in pages:
            key = self.keys.page(kind, page.page)
            pipe.delete(key)
            mapping: dict[str, str | int] = {
                "fetched_at_ms": int(page.fetched_at * 1000),
                "total": page.total,
                "ids": orjson.dumps(page.idents).decode(),
            }
            if page.etag:
                mapping["etag"] = page.etag
            if page.last_modified:
                mapping["last_modified"] = page.last_modified
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()

    def remove_pages(self, kind: str, pages: Sequence[str]) -> None:
        """Forget list pages past the list's end (it shrank)."""
        if pages:
            self.redis.delete(*(self.keys.page(kind, page) for page in pages))

    def pokemon_name_for_id(self, pokemon_id: str) -> str | None:
        name = self.redis.hget(self.keys.pokemon_ids, pokemon_id)
        return name.decode() if isinstance(name, bytes) else name

    def record_failure(self, record: Mapping[str, str]) -> str:
        """Append a permanent failure to the failure stream; returns the entry id.

        A record is at most `failure_max_bytes` (FAILURE_RECORD_MAX_BYTES): past that, its
        longest fields are cut, longest first, and it says `truncated=1`.
        """
        entry = self.redis.xadd(
            self.keys.failures,
            capped(record, self.failure_max_bytes),  # type: ignore[arg-type]
            maxlen=self.failures_maxlen,
            approximate=True,
        )
        return entry.decode() if isinstance(entry, bytes) else str(entry)


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


def now() -> float:
    return time.time()


def _text(value: Any) -> str:
    """A Redis reply as text; nil (None) and Lua's false are empty."""
    if value is None or value is False:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _seconds(value: float) -> str:
    """A lifetime as the meta hash keeps it: whole seconds."""
    return str(max(0, int(value)))


def _revalidated_value(answer: list[Any]) -> Any:
    return GONE if int(answer[0]) < 0 else orjson.loads(answer[1])


def _packed(call: Mapping[str, Any]) -> tuple[Any, ...]:
    """A script call's keys and arguments as EVALSHA takes them after the sha."""
    return (len(call["keys"]), *call["keys"], *call["args"])


def _no_script(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)
