"""Atomic writes of results, their metadata and their change event; fresh reads.

One Lua script writes the value and replaces the metadata hash together, so a reader
never sees a value without its metadata. The change event goes to a stream in another
slot (results/keys.py); the write's script marks the event owed in the metadata
(`event_owed`, an outbox in the value's own slot) and the event's step clears the mark,
so an event a dead worker never sent is sent by whoever finds the mark next: events are
at least once, and appended once per fence. On one Redis the event's step reads the debt
from the metadata and rides in the write's own round trip (`_PAY`); on a cluster, or
with a replica to wait for, it is the write's second round trip.

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

Where the results Redis has replicas, each write waits for one (results/replicas.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from apis.conditional import Validators
from results.failure_record import capped
from results.keys import Keys
from results.lease import Leases
from results.outcome import note_result_key
from results.replicas import ReplicaWait
from telemetry import tracing
from telemetry.metrics import OWED_EVENTS_SENT

log = logging.getLogger("tasks.store")

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

# The outbox: from a write (or revalidation, or removal) until its change event is
# appended, the result's metadata holds `event_owed`, the flags of that event (`changed`
# then `revalidated`, e.g. `10`). It lives in the value's own slot, so it is set in the
# write's own script: a worker that dies before the event leaves the debt written down,
# and whoever next finds it (a claim, a batch, the next write, `apiworker
# send-owed-events`) pays it. A new write over an unpaid one keeps its `changed`: its event
# stands for both, so a reader that follows changes misses none.
_OWED = """
local function owed_change(meta_key, otherwise)
    local owed = redis.call('HGET', meta_key, 'event_owed')
    if owed and string.sub(owed, 1, 1) == '1' then
        return 1
    end
    return otherwise
end
"""

# KEYS: value, meta, single-flight lock, fence counter (one slot: results/keys.py)
# ARGV: value, fetched_at_ms, task_id, lock value ('' for none), fence (0: take one now),
# meta pairs...
# The lock is given up in the same call, whether or not the write is refused.
# Returns {1, changed, fence} when written, {2, fence, changed} when this very write was
# already applied (a replay after a lost reply changes nothing), 0 when a result of a
# higher fence was there. The metadata says its change event is owed (`_OWED`) until the
# caller's next step appends it (`_EVENT`).
_WRITE = (
    _NOW
    + _FENCE
    + _OWED
    + """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
    redis.call('DEL', KEYS[3])
end
local fence = tonumber(ARGV[5])
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if fence > 0 and stored == fence and redis.call('HGET', KEYS[2], 'task_id') == ARGV[3] then
    return {2, fence, owed_change(KEYS[2], 1)}
end
if fence == 0 then
    fence = next_fence(KEYS[4], stored)
end
if stored > fence then
    return 0
end
local changed = redis.call('GET', KEYS[1]) ~= ARGV[1] and 1 or owed_change(KEYS[2], 0)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'fetched_at_ms', ARGV[2], 'stored_ms', now_ms(), 'fence', fence,
    'event_owed', changed .. '0', unpack(ARGV, 6))
return {1, changed, fence}
"""
)

# KEYS: value, meta, single-flight lock, fence counter (one slot)
# ARGV: fetched_at_ms, task_id, lock value ('' for none), etag, last_modified, max_age
# ('' for each one the 304 did not carry), fence (0: take one now)
# Returns {1, value, fence, changed} when brought forward, {2, value, fence, changed} when
# already brought forward by this very call (a replay), {0, value} when a result of a
# higher fence was there, {-1} when the value is gone: the lock is then kept, for the
# caller's whole fetch and its write. `changed` is 0 unless an unpaid write's event is
# folded into this one's (`_OWED`).
_REVALIDATE = (
    _NOW
    + _FENCE
    + _OWED
    + """
local value = redis.call('GET', KEYS[1])
if not value then
    return {-1}
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
    redis.call('DEL', KEYS[3])
end
local fence = tonumber(ARGV[7])
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if fence > 0 and stored == fence and redis.call('HGET', KEYS[2], 'task_id') == ARGV[2] then
    return {2, value, fence, owed_change(KEYS[2], 0)}
end
if fence == 0 then
    fence = next_fence(KEYS[4], stored)
end
if stored > fence then
    return {0, value}
end
local changed = owed_change(KEYS[2], 0)
redis.call('HSET', KEYS[2], 'fetched_at_ms', ARGV[1], 'stored_ms', now_ms(), 'fence', fence,
    'task_id', ARGV[2], 'event_owed', changed .. '1')
if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[2], 'etag', ARGV[4])
end
if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[2], 'last_modified', ARGV[5])
end
if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[2], 'max_age', ARGV[6])
else
    redis.call('HDEL', KEYS[2], 'max_age')
end
return {1, value, fence, changed}
"""
)

# KEYS: the partition's event stream, the partition's last-fence hash (one slot); on a
# single Redis also the result's metadata (any keys may meet there)
# ARGV: stream maxlen, value key, fence, event fields...
# Appends the change event of one applied write, revalidation or removal, once: the
# hash keeps the highest fence whose event each key has had, so an event sent again
# (a replayed write, a job run again after it wrote) or an older fence's, arriving
# late, appends nothing. Given the metadata, it marks the event paid in the same call
# (`_SETTLE`); on a cluster that is the caller's next step. Returns 1 when appended.
_EVENT = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local fence = tonumber(ARGV[3])
local appended = 0
if last < fence then
    redis.call('HSET', KEYS[2], ARGV[2], fence)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
    appended = 1
end
if KEYS[3] and tonumber(redis.call('HGET', KEYS[3], 'fence') or '0') == fence then
    redis.call('HDEL', KEYS[3], 'event_owed')
end
return appended
"""

# KEYS: the result's metadata. ARGV: the fence whose event was appended.
# On a cluster, after the event's round trip: the debt is cleared unless a newer write
# (a higher fence) owes its own since.
_SETTLE = """
if tonumber(redis.call('HGET', KEYS[1], 'fence') or '0') == tonumber(ARGV[1]) then
    return redis.call('HDEL', KEYS[1], 'event_owed')
end
return 0
"""


# KEYS: the partition's event stream, its last-fence hash, the result's metadata (one
# Redis only: the three live in different slots). ARGV: stream maxlen, value key, kind,
# ident.
# Pays whatever change event the metadata says is owed (`_OWED`), reading the event's
# fields from the metadata itself, as `send_owed` does from a claim's reply: so on one
# Redis it rides in the same round trip as the write that owes it. Appends once per
# fence, as `_EVENT` does, and marks the debt paid. Returns 1 when appended. Its fields
# are the ones `ResultStore._after` and `send_owed` build, in the same order
# (tests/unit/test_store.py holds them equal).
_PAY = """
local m = redis.call('HMGET', KEYS[3], 'event_owed', 'fence', 'task_id', 'fetched_at_ms',
    'removed')
if not m[1] then
    return 0
end
local fence = tonumber(m[2] or '0')
local appended = 0
if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') < fence then
    redis.call('HSET', KEYS[2], ARGV[2], fence)
    local fields = {'key', ARGV[2], 'kind', ARGV[3], 'id', ARGV[4], 'task_id', m[3] or '',
        'fetched_at_ms', m[4] or '', 'changed', string.sub(m[1], 1, 1),
        'revalidated', string.sub(m[1], 2, 2), 'fence', m[2]}
    if m[5] == '1' then
        fields[#fields + 1] = 'removed'
        fields[#fields + 1] = '1'
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    appended = 1
end
redis.call('HDEL', KEYS[3], 'event_owed')
return appended
"""


#: The field of an event hash that `_confirm` raises before a WAIT (no value key is
#: named so: they all hold a `:`).
_WAIT_FIELD = "replica-wait"

# KEYS: value, meta, lock, fence counter. ARGV: started_ms ('' for now: the job's first
# claim), window_ms, lock token, lock ttl ms, upstream window cap ms ('' when the window
# does not follow the upstream's max-age).
# One round trip answers "is there a fresh value?" and, if not, "may I fetch it?", and
# gives the owner a fence and the stored copy's validators for a conditional fetch.
# Times are Redis's: a value is fresh when Redis stored it within the window before the
# job began (`stored_ms`; results written before fences existed have only
# `fetched_at_ms`). The lock's value is "token|fence": a claim sent again after its reply
# was lost finds its own token and is the owner again, with the same fence.
# Returns {'fresh', started_ms, value, fence, task_id, fetched_at_ms, event_owed} (the
# stored result's: a claim that finds its event owed sends it, `_OWED`),
# {'owner', started_ms, fence, etag, last_modified[, event_owed, its fence, task_id,
# fetched_at_ms]} (the stored result's, when there is one) or
# {'wait', started_ms, lease ms left}.
_CLAIM = (
    _NOW
    + _FENCE
    + """
local started = ARGV[1] == '' and now_ms() or tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'stored_ms', 'fetched_at_ms', 'fence', 'task_id',
    'event_owed')
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
        return {'fresh', started, value, meta[3] or '0', meta[4] or '', meta[2] or '',
            meta[5] or ''}
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
    return {'owner', started, fence, validators[1] or '', validators[2] or '',
        meta[5] or '', meta[3] or '0', meta[4] or '', meta[2] or ''}
end
return {'owner', started, fence, '', ''}
"""
)

# KEYS: value, meta, fence counter (one slot). ARGV: tombstone ttl ms.
# A result whose upstream item is gone (an article no longer listed): its value is
# removed (its `removed=1` event is the caller's next step, owed until then). Its
# metadata becomes a tombstone (the fence, for a while) so that a late write of the
# item, fetched before the removal, is refused. Returns {fence, 1} for this removal,
# {fence, 0} for an earlier one whose event is still owed, 0 when there was no value.
_REMOVE = (
    _NOW
    + _FENCE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
    local tomb = redis.call('HMGET', KEYS[2], 'removed', 'event_owed', 'fence')
    if tomb[1] and tomb[2] then
        return {tonumber(tomb[3]), 0}
    end
    return 0
end
local fence = next_fence(KEYS[3], tonumber(redis.call('HGET', KEYS[2], 'fence') or '0'))
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'fence', fence, 'stored_ms', now_ms(), 'removed', '1',
    'event_owed', '10')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {fence, 1}
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
class Owed:
    """A change event a result's metadata says is still owed (`event_owed`): what
    sending it needs, from the metadata of the write, revalidation or removal it is for."""

    fence: int
    task_id: str
    fetched_ms: str
    changed: int
    revalidated: int
    removed: bool = False

    @classmethod
    def parse(
        cls, flags: Any, fence: Any, task_id: Any, fetched_ms: Any, removed: Any = None
    ) -> Owed | None:
        """The debt in these metadata fields; None when `flags` (`event_owed`) is unset."""
        owed = _text(flags)
        if not owed:
            return None
        return cls(
            fence=int(_text(fence) or 0),
            task_id=_text(task_id),
            fetched_ms=_text(fetched_ms),
            changed=int(owed[:1] == "1"),
            revalidated=int(owed[1:2] == "1"),
            removed=_text(removed) == "1",
        )


@dataclass(frozen=True)
class Stored:
    """What the metadata says about one stored result (the batch path reads many)."""

    #: When Redis stored it (its `stored_ms`, epoch seconds on Redis's clock).
    stored_at: float
    max_age: float | None
    validators: Validators | None
    #: The change event its last write still owes, if any (`ResultStore.send_owed`).
    owed: Owed | None = None


@dataclass(frozen=True)
class Fetched:
    """A transformed result with what the metadata hash records about it."""

    kind: str
    ident: str
    value: Any
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None
    #: Another ident that finds the same result, kept in its kind's alias index
    #: (results/keys.py: the kind's registry entry names it).
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


#: One change event to send: kind, ident, fence and its stream fields.
_Event = tuple[str, str, int, list[Any]]

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
    """Reads and writes results in the documented keys of one Redis or Redis Cluster."""

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
        self._event = client.register_script(_EVENT)
        self._settle = client.register_script(_SETTLE)
        self._pay = client.register_script(_PAY)
        #: On a cluster the event and its metadata live in different slots: an event is
        #: marked paid after its script (`_SETTLE`), in each master's WAIT round trip or
        #: in one of its own.
        self._cluster = isinstance(client, RedisCluster)
        #: The single-flight leases of these keys (results/lease.py), renewed through
        #: `lease_client` when given: one with a short timeout and no retries.
        self.leases = Leases(lease_client or client)
        #: Whether a write waits for a replica (results/replicas.py).
        self.replicas = ReplicaWait(client, replica_wait_ms)

    def write(
        self,
        result: Fetched,
        task_id: str,
        *,
        release: tuple[str, str] | None = None,
        fence: int | None = None,
    ) -> bool:
        """Store one result atomically, then its change event; False when a result of a
        higher fence was there.

        `release` is a single-flight lock (key, lock value) to give up in the same call;
        `fence`, the claim's, stands for the result's own: a keyword, because a copy of
        the result (`dataclasses.replace`) cost as much as building the whole call.
        """
        key = self.keys.result(result.kind, result.ident)
        note_result_key(key)
        with self._span("apiworker.store.write", key, 1) as span:
            (outcome,) = self._apply([result], task_id, [(release, fence)])
            written = outcome == "written"
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
            script, call = self._script_call(result, task_id, release, fence)
            (answer,) = self._run_and_pay([result], [(script, _packed(call))], task_id)
        return _revalidated_value(answer)

    def confirm_read(self, kind: str, ident: str) -> None:
        """Before a job is acknowledged on a value another job stored: with replicas,
        wait until one has it (`_confirm`). Without replicas, nothing is sent."""
        if self.replicas.needed():
            self._confirm([self.keys.fence(kind, ident)], [])

    def write_many(self, results: Sequence[Fetched | Unchanged], task_id: str) -> int:
        """Store several results in one round trip; each write stays atomic."""
        return sum(1 for outcome in self.apply_many(results, task_id) if outcome == "written")

    def apply_many(self, results: Sequence[Fetched | Unchanged], task_id: str) -> list[str]:
        """Write or revalidate several results in one round trip, each atomically, then
        their change events in one more.

        Per result: "written", "revalidated", "refused" (a newer one was there) or
        "gone" (a revalidation found no stored value: fetch it whole).
        """
        for result in results:
            note_result_key(self.keys.result(result.kind, result.ident))
        with self._span("apiworker.store.write", None, len(results)) as span:
            outcomes = self._apply(results, task_id, [(None, None)] * len(results))
            if span is not None:
                span.set_attribute("apiworker.results.written", outcomes.count("written"))
                span.set_attribute("apiworker.results.revalidated", outcomes.count("revalidated"))
        return outcomes

    def _apply(
        self,
        results: Sequence[Fetched | Unchanged],
        task_id: str,
        claims: Sequence[tuple[tuple[str, str] | None, int | None]],
    ) -> list[str]:
        """The scripts of `results` (each with its claim's lock and fence) in one plain
        pipeline, then `_after`: their events, index entries and replica wait."""
        calls: list[tuple[Script, tuple[Any, ...]]] = []
        for result, (release, fence) in zip(results, claims, strict=True):
            script, call = self._script_call(result, task_id, release, fence)
            calls.append((script, _packed(call)))
        return self._outcomes(results, self._run_and_pay(results, calls, task_id))

    def _run_and_pay(
        self,
        results: Sequence[Fetched | Unchanged],
        calls: Sequence[tuple[Script, Any]],
        task_id: str,
    ) -> list[Any]:
        """The scripts of `results` (`calls`), then their change events and alias index
        entries: in the same round trip on one Redis with no replica to wait for
        (`_apply_and_pay`), else in a second (`_after`). Raises the first error reply;
        returns the scripts' replies."""
        if not self._cluster and not self.replicas.needed():
            return self._apply_and_pay(results, calls)
        replies = self._run(calls)
        _raise_first_error(replies)
        self._after(results, replies, task_id)
        return replies

    def _apply_and_pay(
        self, results: Sequence[Fetched | Unchanged], calls: Sequence[tuple[Script, Any]]
    ) -> list[Any]:
        """On one Redis without a replica to wait for: the scripts of `results`, each
        one's change event (`_PAY`, from the metadata its script just wrote) and the
        alias index entries, all in one round trip instead of `_after`'s second.

        The events and debts are the same as `_after`'s: a write that was refused or
        found its value gone pays only what the result's metadata still owes (a newer
        write's event, once per fence). An alias entry names the result's own ident, so
        it is set whatever the write's outcome.
        """
        pays = [(self._pay, self._pay_call(result.kind, result.ident)) for result in results]
        aliases = [
            (self.keys.alias_index_for(result.kind, result.alias), result.alias, result.ident)
            for result in results
            if isinstance(result, Fetched) and result.alias
        ]
        replies, answers = self._run_with(calls, _alias_commands(aliases), then=pays)
        _raise_first_error([*replies, *answers])  # the scripts' own errors come first
        return replies[: len(calls)]

    def _pay_call(self, kind: str, ident: str) -> tuple[Any, ...]:
        keys = [
            self.keys.events_for(kind, ident),
            self.keys.event_fences_for(kind, ident),
            self.keys.meta(kind, ident),
        ]
        args = [self.events_maxlen, self.keys.result(kind, ident), kind, ident]
        return _packed({"keys": keys, "args": args})

    def _after(
        self, results: Sequence[Fetched | Unchanged], replies: Sequence[Any], task_id: str
    ) -> None:
        """The second step of the applied writes and revalidations in `replies`: each
        one's change event (`_EVENT`, once per fence) and alias, in one round trip,
        then, with replicas, the wait (`_confirm`).

        Each script left its event owed in the result's metadata (`_OWED`), and the
        event's step marks it paid. A job is acknowledged only after this returns: a
        failed event fails the job, and a worker that dies between the two steps leaves
        the debt written down. Whoever finds it next sends the event: the job run again
        (a replay answers "already applied" and sends it), any job's claim of the result
        or batch with its name, the next write (whose event stands for both) or
        `apiworker send-owed-events`. Events come
        once per fence and in fence order per key; readers read the value the event
        names, already there.
        """
        events: list[_Event] = []
        aliases: list[tuple[str, str, str]] = []
        for result, answer in zip(results, replies, strict=True):
            applied = _applied(result, answer)
            if applied is None:
                continue
            changed, fence = applied
            kind, ident = result.kind, result.ident
            revalidated = isinstance(result, Unchanged)
            key = self.keys.result(kind, ident)
            fields = [
                "key", key, "kind", kind, "id", ident, "task_id", task_id,
                "fetched_at_ms", int(result.fetched_at * 1000), "changed", changed,
                "revalidated", int(revalidated), "fence", fence,
            ]  # fmt: skip
            events.append((kind, ident, fence, fields))
            alias = None if revalidated else getattr(result, "alias", None)
            if alias:
                aliases.append((self.keys.alias_index_for(kind, alias), alias, ident))
        self._send(events, aliases)

    def send_owed(self, kind: str, owed: Sequence[tuple[str, Owed]]) -> int:
        """Send the change events that the metadata of `owed`'s results says are still
        owed (a writer died before its event), each marked paid; returns how many were
        appended (none where one had been, only its mark was left)."""
        events: list[_Event] = []
        for ident, debt in owed:
            fields: list[Any] = [
                "key", self.keys.result(kind, ident), "kind", kind, "id", ident,
                "task_id", debt.task_id, "fetched_at_ms", debt.fetched_ms,
                "changed", debt.changed, "revalidated", debt.revalidated, "fence", debt.fence,
            ]  # fmt: skip
            if debt.removed:
                fields += ["removed", 1]
            events.append((kind, ident, debt.fence, fields))
        appended = self._send(events, ())
        if appended:
            OWED_EVENTS_SENT.labels(kind).inc(appended)
        return appended

    def _send(self, events: Sequence[_Event], aliases: Sequence[tuple[str, str, str]]) -> int:
        """`events` and the alias index entries in one round trip, each event marked paid
        (in its own script on a single Redis, `_settle_all` on a cluster), then, with
        replicas, the wait (`_confirm`). Returns how many events were appended."""
        calls = [
            (self._event, self._event_call(kind, ident, fence, fields))
            for kind, ident, fence, fields in events
        ]
        confirm = [self.keys.fence(kind, ident) for kind, ident, _, _ in events]
        wait = bool(confirm) and self.replicas.needed()
        if wait and not self._cluster:
            # One master: the INCR and WAIT of `_confirm` ride in the events' round trip.
            return self._emit(calls, aliases, wait_key=confirm[0])
        appended = self._emit(calls, aliases)
        paid = [(self.keys.meta(kind, ident), fence) for kind, ident, fence, _ in events]
        if wait:  # a cluster: each master's wait carries the marks of its keys
            self._confirm(confirm, [str(call[1][2]) for call in calls], settle=paid)
        elif self._cluster:
            self._settle_all(paid)
        return appended

    def _settle_all(self, paid: Sequence[tuple[str, int]]) -> None:
        """On a cluster without replicas, after their events' round trip: mark each of
        `paid` (metadata key, fence) paid (`_SETTLE`), in one more round trip.

        A mark this fails to clear is harmless: whoever finds it sends the event again,
        which appends nothing (once per fence), and clears it then. So a failure here
        does not fail the job that has stored its result and its event."""
        calls = [(self._settle, _packed({"keys": [meta], "args": [fence]})) for meta, fence in paid]
        if not calls:
            return
        try:
            self._run(calls)  # the replies (errors among them) change nothing
        except redis.RedisError as error:
            log.info("events appended, marks left for later: %s", type(error).__name__)

    def _event_call(
        self, kind: str, ident: str, fence: int, fields: Sequence[Any]
    ) -> tuple[Any, ...]:
        keys = [self.keys.events_for(kind, ident), self.keys.event_fences_for(kind, ident)]
        if not self._cluster:  # one Redis: the event marks itself paid (`_EVENT`)
            keys.append(self.keys.meta(kind, ident))
        args = [self.events_maxlen, self.keys.result(kind, ident), fence, *fields]
        return _packed({"keys": keys, "args": args})

    def _emit(
        self,
        calls: Sequence[tuple[Script, tuple[Any, ...]]],
        aliases: Sequence[tuple[str, str, str]],
        wait_key: str | None = None,
    ) -> int:
        """The event scripts and the alias index entries, in one plain pipeline; with
        `wait_key` (a fence counter, on a single Redis), `_confirm`'s INCR and WAIT after
        them. Returns how many events were appended."""
        extra = _alias_commands(aliases)
        if wait_key is not None:
            extra += [("INCR", wait_key), ("WAIT", 1, self.replicas.timeout_ms)]
        if not calls and not extra:
            return 0
        replies, answers = self._run_with(calls, extra)
        waited = answers.pop() if wait_key is not None else None
        _raise_first_error([*replies, *answers])
        if wait_key is not None:
            self.replicas.check(waited)
        return sum(1 for reply in replies if reply == 1)

    def _confirm(
        self,
        counters: Sequence[str],
        hashes: Sequence[str],
        settle: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Wait until a replica of each master that holds one of `keys` has the writes
        made to it so far; raise `ReplicaNotConfirmed` when one does not in time.
        `settle` (metadata key, fence: events just appended) are marked paid in the
        round trip of their master (`_SETTLE`, sent whole with EVAL: a promoted replica
        has no scripts loaded); one that fails stays owed, harmless (`_settle_all`).

        WAIT counts only its own connection's writes, so each master's round trip
        begins with a write to it: one of the given keys raised (a fence counter of
        `counters` with INCR, an event hash of `hashes` with a `HINCRBY` of a field no
        value key has; both only need to grow). It follows every earlier write to that
        master in the replication stream, so a replica that has it has them too. On a
        cluster each master is asked over its own connection (its `redis_connection`),
        in turn.
        """
        by_node: dict[int, tuple[Any, str, bool]] = {}
        for key, counter in [(key, True) for key in counters] + [(key, False) for key in hashes]:
            node = self._node_client(key)
            by_node.setdefault(id(node), (node, key, counter))
        marks: dict[int, list[tuple[str, int]]] = {}
        for meta, fence in settle:  # each beside a counter: the same slot
            marks.setdefault(id(self._node_client(meta)), []).append((meta, fence))
        for node, key, counter in by_node.values():
            pipe = node.pipeline(transaction=False)
            for meta, fence in marks.get(id(node), ()):
                pipe.eval(_SETTLE, 1, meta, fence)
            if counter:
                pipe.incr(key)
            else:
                pipe.hincrby(key, _WAIT_FIELD, 1)
            pipe.execute_command("WAIT", 1, self.replicas.timeout_ms)
            self.replicas.check(pipe.execute(raise_on_error=False)[-1])

    def _node_client(self, key: str) -> Any:
        """The client of the master that holds `key`: on a cluster, that node's own."""
        if isinstance(self.redis, RedisCluster):
            return self.redis.get_node_from_key(key).redis_connection
        return self.redis

    def _run(
        self,
        calls: Sequence[tuple[Script, tuple[Any, ...]]],
        extra: Sequence[tuple[Any, ...]] = (),
    ) -> list[Any]:
        """EVALSHA each call, then the `extra` commands, in one plain pipeline; a script
        Redis lost (a restart, SCRIPT FLUSH) is loaded and its calls sent again. Returns
        the calls' replies.

        EVALSHA in a plain pipeline: redis-py's script pipeline asks `SCRIPT EXISTS`
        first, a second round trip per batch.
        """
        return self._run_with(calls, extra)[0]

    def _run_with(
        self,
        calls: Sequence[tuple[Script, tuple[Any, ...]]],
        extra: Sequence[tuple[Any, ...]] = (),
        then: Sequence[tuple[Script, tuple[Any, ...]]] = (),
    ) -> tuple[list[Any], list[Any]]:
        """`_run`, with the `extra` commands' replies too (errors as replies, for the
        caller to raise). `then` are script calls that read what `calls` wrote (the
        events' `_PAY`): sent after them, their replies after the calls', and sent again
        after any call that Redis had lost is sent again, so they never read too early."""
        everything = [*calls, *then]
        replies, answers = self._evalsha_all(everything, extra)
        lost = [index for index, reply in enumerate(replies) if _no_script(reply)]
        if lost:
            for script in {id(script): script for script, _ in everything}.values():
                _load(self.redis, script.script)
            lost_calls = [index for index in lost if index < len(calls)]
            if lost_calls:
                lost = lost_calls + list(range(len(calls), len(everything)))
            again, _ = self._evalsha_all([everything[i] for i in lost])
            for index, reply in zip(lost, again, strict=True):
                replies[index] = reply
        return replies, answers

    @staticmethod
    def _outcomes(results: Sequence[Fetched | Unchanged], replies: list[Any]) -> list[str]:
        outcomes: list[str] = []
        for result, answer in zip(results, replies, strict=True):  # errors already raised
            if isinstance(result, Unchanged):
                status = int(answer[0])
                outcomes.append(
                    {1: "revalidated", 2: "revalidated", 0: "refused"}.get(status, "gone")
                )
            else:
                outcomes.append("written" if answer else "refused")
        return outcomes

    def _evalsha_all(
        self,
        calls: Sequence[tuple[Script, tuple[Any, ...]]],
        extra: Sequence[tuple[Any, ...]] = (),
    ) -> tuple[list[Any], list[Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for script, args in calls:
            pipe.evalsha(script.sha, *args)
        for command in extra:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        replies = list(pipe.execute(raise_on_error=False))
        return replies[: len(calls)], replies[len(calls) :]

    def _span(self, name: str, key: str | None, count: int) -> Any:
        """The write's span when tracing is on (telemetry.tracing), else a no-op context."""
        if not tracing.enabled():
            return tracing.NO_SPAN
        attributes: dict[str, Any] = {"apiworker.results.count": count}
        if key is not None:
            attributes["apiworker.result.key"] = key
        pool = getattr(self.redis, "connection_pool", None)
        connection = pool.connection_kwargs if pool is not None else {}
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

        A stored value whose change event is still owed (its writer died or failed
        before the event's round trip) has it sent here, once per fence (`send_owed`),
        whether it is served fresh or fetched again.

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
            fresh = Claim(state, began, orjson.loads(answer[2]), fence=int(answer[3]))
            owed = Owed.parse(answer[6], answer[3], answer[4], answer[5])
            if owed is not None:
                self.send_owed(kind, [(ident, owed)])
            return fresh
        if state == "owner":
            fence = int(answer[2])
            validators = Validators(_text(answer[3]) or None, _text(answer[4]) or None)
            owed = Owed.parse(*answer[5:9]) if len(answer) > 5 else None
            if owed is not None:  # paid before this fetch, which may fail and write nothing
                self.send_owed(kind, [(ident, owed)])
            return Claim(
                state,
                began,
                validators=validators if validators else None,
                fence=fence,
                lock_value=f"{token}|{fence}",
            )
        return Claim(state, began, lease_left=max(int(answer[2]), 0) / 1000)

    def _script_call(
        self,
        result: Fetched | Unchanged,
        task_id: str,
        release: tuple[str, str] | None = None,
        fence: int | None = None,
    ) -> tuple[Script, dict[str, Any]]:
        """The script of one result, with its keys (value, meta, the single-flight lock,
        the fence counter: one slot) and arguments: the write (`_WRITE`) of a new
        result, the revalidation (`_REVALIDATE`) of an unchanged one.

        `release` is the lock (key, lock value) to give up in the same call (None: the
        lock is named, nothing released); `fence`, the claim's, stands for the result's.
        """
        lock_key, lock_value = release or (self.keys.lock(result.kind, result.ident), "")
        keys = [
            self.keys.result(result.kind, result.ident),
            self.keys.meta(result.kind, result.ident),
            lock_key,
            self.keys.fence(result.kind, result.ident),
        ]
        taken = result.fence if fence is None else fence
        max_age = None if result.max_age is None else _seconds(result.max_age)
        fetched_ms = int(result.fetched_at * 1000)
        if isinstance(result, Unchanged):
            args: list[Any] = [
                fetched_ms,
                task_id,
                lock_value,
                result.etag or "",
                result.last_modified or "",
                max_age or "",
                taken,
            ]
            return self._revalidate, {"keys": keys, "args": args}
        if result.alias:  # its kind must have an index: refused before anything is written
            self.keys.alias_index_for(result.kind, result.alias)
        meta: list[str] = ["task_id", task_id]
        if result.etag:
            meta += ["etag", result.etag]
        if result.last_modified:
            meta += ["last_modified", result.last_modified]
        if max_age is not None:
            meta += ["max_age", max_age]
        args = [orjson.dumps(result.value), fetched_ms, task_id, lock_value, taken, *meta]
        return self._write, {"keys": keys, "args": args}

    def remove(self, kind: str, idents: Sequence[str], *, tombstone_seconds: float) -> int:
        """Remove the results of upstream items that are gone; returns how many were there.

        Each removal is atomic; its `removed=1` event follows (`_EVENT`, once per
        fence), owed until then: a removal whose event a dead worker never sent is sent
        by the next call for that ident. Its metadata stays as a tombstone for
        `tombstone_seconds`, so a write fetched before the removal is refused (its fence
        is lower), and then expires.
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
                        ],
                        "args": [int(tombstone_seconds * 1000)],
                    }
                ),
            )
            for ident in idents
        ]
        if not calls:
            return 0
        replies = self._run(calls)
        owed: list[tuple[str, Owed]] = []
        removed = 0
        for ident, reply in zip(idents, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if not reply:
                continue
            fence, now_removed = int(reply[0]), int(reply[1])
            removed += now_removed
            owed.append((ident, Owed(fence, "", "", changed=1, revalidated=0, removed=True)))
        self.send_owed(kind, owed)
        return removed

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
        for every ident, fresh or not: a fence nobody writes with costs nothing. On a
        cluster the time is one node's, asked first: a cluster pipeline carries only
        commands with keys.
        """
        pipe = self.redis.pipeline(transaction=False)
        clock: Any = None
        if self._cluster:
            # A cluster pipeline refuses a command without a key: one node's TIME first.
            clock = self.redis.time()
        else:
            pipe.time()
        for ident in idents:
            pipe.hmget(
                self.keys.meta(kind, ident),
                "stored_ms", "fetched_at_ms", "max_age", "etag", "last_modified",
                "event_owed", "fence", "task_id",
            )  # fmt: skip
            pipe.exists(self.keys.result(kind, ident))
            if fences:
                pipe.incr(self.keys.fence(kind, ident))
        answers = pipe.execute()
        if clock is not None:
            answers.insert(0, clock)
        seconds, micros = answers[0]
        step = 3 if fences else 2
        found: dict[str, Stored] = {}
        taken: dict[str, int] = {}
        for index, ident in enumerate(idents):
            at = 1 + step * index
            stored_ms, fetched_ms, max_age, etag, last_modified, owed, fence, writer = answers[at]
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
                owed=Owed.parse(owed, fence, writer, fetched_ms),
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

    def ident_for_alias(self, kind: str, alias: str) -> str | None:
        """The ident `kind`'s result found by `alias` is stored under, or None when no
        result was stored with that alias (or `kind` has none)."""
        if self.keys.alias_index(kind) is None:
            return None
        ident = self.redis.hget(self.keys.alias_index_for(kind, alias), alias)
        return ident.decode() if isinstance(ident, bytes) else ident

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


def _applied(result: Fetched | Unchanged, answer: Any) -> tuple[int, int] | None:
    """(changed, fence) of a write or revalidation the script applied (or had applied:
    a replay, whose event is sent again and appended only if it was not), else None."""
    if isinstance(answer, Exception) or not answer:
        return None
    status = int(answer[0])
    if isinstance(result, Unchanged):
        return (int(answer[3]), int(answer[2])) if status in (1, 2) else None
    if status == 1:
        return int(answer[1]), int(answer[2])
    # A replay: the owed event's `changed`, or "may have" when it was paid already.
    return int(answer[2]), int(answer[1])


def _load(client: Any, script: Any) -> None:
    """Load `script` where its calls run (redis-py's cluster client sends SCRIPT LOAD to
    every master)."""
    client.script_load(script)


def _packed(call: Mapping[str, Any]) -> tuple[Any, ...]:
    """A script call's keys and arguments as EVALSHA takes them after the sha."""
    return (len(call["keys"]), *call["keys"], *call["args"])


def _alias_commands(aliases: Sequence[tuple[str, str, str]]) -> list[tuple[Any, ...]]:
    """One `HSET` per (alias index, alias, ident): where an alias of a result points."""
    return [("HSET", index, alias, ident) for index, alias, ident in aliases]


def _raise_first_error(replies: Sequence[Any]) -> None:
    """A pipeline's replies carry errors as values: the first one is raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _no_script(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)
