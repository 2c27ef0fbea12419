"""Atomic writes of results, their metadata and their change event; fresh reads.

One Lua script writes the value, replaces the metadata hash and appends the stream event
together, so a reader never sees a value without its metadata, and it refuses a result
fetched earlier than the one already stored, so a late, older job cannot overwrite a
newer result.

A revalidation (the upstream answered `304 Not Modified` to the stored validators) is
another script with the same guarantees: the value is left as it is, the metadata is
brought forward (fetch time, task, the validators the 304 carried) and the stream gets
an entry with `changed=0` and `revalidated=1`; an older revalidation never moves the
metadata of a newer result.
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
from telemetry import tracing

# KEYS: value, meta, events stream, alias hash, single-flight lock
# ARGV: value, fetched_at_ms, stream maxlen, kind, ident, task_id, alias field ('' for
# none), lock token ('' for none), meta pairs...
# The lock is given up in the same call, whether or not the write is refused.
# Returns 1 when written, 0 when a newer result was there.
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
    'fetched_at_ms', ARGV[2], 'changed', changed, 'revalidated', '0')
return 1
"""

# KEYS: value, meta, events stream, single-flight lock
# ARGV: fetched_at_ms, stream maxlen, kind, ident, task_id, lock token ('' for none),
# etag, last_modified, max_age ('' for each one the 304 did not carry)
# Returns {1, value} when brought forward, {0, value} when a newer result was there,
# {-1} when the value is gone (the caller must fetch it whole).
_REVALIDATE = """
if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) == ARGV[6] then
    redis.call('DEL', KEYS[4])
end
local value = redis.call('GET', KEYS[1])
if not value then
    return {-1}
end
local stored = redis.call('HGET', KEYS[2], 'fetched_at_ms')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
    return {0, value}
end
redis.call('HSET', KEYS[2], 'fetched_at_ms', ARGV[1], 'task_id', ARGV[5])
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
    'fetched_at_ms', ARGV[1], 'changed', '0', 'revalidated', '1')
return {1, value}
"""


# KEYS: value, meta, lock. ARGV: started_ms, window_ms, lock token, lock ttl ms,
# upstream window cap ms ('' when the window does not follow the upstream's max-age).
# One round trip answers "is there a fresh value?" and, if not, "may I fetch it?", and
# gives the owner the stored copy's validators for a conditional fetch.
_CLAIM = """
local stored = redis.call('HGET', KEYS[2], 'fetched_at_ms')
local value = redis.call('GET', KEYS[1])
if stored and value then
    local window = tonumber(ARGV[2])
    if ARGV[5] ~= '' then
        local upstream = redis.call('HGET', KEYS[2], 'max_age')
        if upstream then
            window = math.min(tonumber(upstream) * 1000, tonumber(ARGV[5]))
        end
    end
    if tonumber(stored) >= tonumber(ARGV[1]) - window then
        return {'fresh', value}
    end
end
if redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
    if value then
        local validators = redis.call('HMGET', KEYS[2], 'etag', 'last_modified')
        return {'owner', validators[1] or '', validators[2] or ''}
    end
    return {'owner', '', ''}
end
return {'wait', redis.call('PTTL', KEYS[3])}
"""


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

    The owner also gets the stored copy's validators (None when nothing is stored).
    """

    state: str  # "fresh", "owner" or "wait"
    value: Any = None
    validators: Validators | None = None
    #: With "wait": seconds until the holder's lease runs out unless it is renewed.
    lease_left: float = 0.0


@dataclass(frozen=True)
class Stored:
    """What the metadata says about one stored result (the batch path reads many)."""

    fetched_at: float
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


@dataclass(frozen=True)
class Unchanged:
    """A `304 Not Modified` to the stored validators: the stored value is still current."""

    kind: str
    ident: str
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None
    max_age: float | None = None


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
        self, client: redis.Redis, keys: Keys, *, events_maxlen: int, failures_maxlen: int
    ) -> None:
        self.redis = client
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.failures_maxlen = failures_maxlen
        self._write = client.register_script(_WRITE)
        self._revalidate = client.register_script(_REVALIDATE)
        self._claim = client.register_script(_CLAIM)
        #: The single-flight leases of these keys (tasks/lease.py).
        self.leases = Leases(client)

    def write(
        self, result: Fetched, task_id: str, *, release: tuple[str, str] | None = None
    ) -> bool:
        """Store one result atomically; False when a newer one was already there.

        `release` is a single-flight lock (key, token) to give up in the same call. One
        script call, not a pipeline: redis-py asks `SCRIPT EXISTS` before every pipeline
        that runs a script, a round trip more per job.
        """
        key = self.keys.result(result.kind, result.ident)
        note_result_key(key)
        with self._span("apiworker.store.write", key, 1) as span:
            written = bool(self._write(**self._write_args(result, task_id, release)))
            if span is not None:
                span.set_attribute("apiworker.results.written", int(written))
        return written

    def revalidate(
        self, result: Unchanged, task_id: str, *, release: tuple[str, str] | None = None
    ) -> Any:
        """Bring a stored result forward after a 304; returns the stored value (the newer
        one when a newer result was already there), or `GONE` when none is stored."""
        key = self.keys.result(result.kind, result.ident)
        note_result_key(key)
        with self._span("apiworker.store.revalidate", key, 1):
            answer = self._revalidate(**self._revalidate_args(result, task_id, release))
        return _revalidated_value(answer)

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
            calls.append((script, (len(call["keys"]), *call["keys"], *call["args"])))
        with self._span("apiworker.store.write", None, len(results)) as span:
            replies = self._evalsha_all(calls)
            lost = [index for index, reply in enumerate(replies) if _no_script(reply)]
            if lost:
                for script in {id(script): script for script, _ in calls}.values():
                    self.redis.script_load(script.script)
                again = self._evalsha_all([calls[i] for i in lost])
                for index, reply in zip(lost, again, strict=True):
                    replies[index] = reply
            outcomes = self._outcomes(results, replies)
            if span is not None:
                span.set_attribute("apiworker.results.written", outcomes.count("written"))
                span.set_attribute("apiworker.results.revalidated", outcomes.count("revalidated"))
        return outcomes

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

    def _evalsha_all(self, calls: Sequence[tuple[Script, tuple[Any, ...]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for script, args in calls:
            pipe.evalsha(script.sha, *args)
        return list(pipe.execute(raise_on_error=False))

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
        started: float,
        freshness: Freshness,
        token: str,
        ttl: float,
    ) -> Claim:
        """A value fresh at `started` (by `freshness`), else the fetch lock, else "wait"."""
        keys = [
            self.keys.result(kind, ident),
            self.keys.meta(kind, ident),
            self.keys.lock(kind, ident),
        ]
        cap = "" if freshness.upstream_cap is None else int(freshness.upstream_cap * 1000)
        args: list[str | int] = [
            int(started * 1000),
            int(freshness.max_age * 1000),
            token,
            int(ttl * 1000),
            cap,
        ]
        answer = self._claim(keys=keys, args=args)
        state = _text(answer[0])
        if state == "fresh":
            note_result_key(keys[0])
            return Claim(state, orjson.loads(answer[1]))
        if state == "owner":
            validators = Validators(_text(answer[1]) or None, _text(answer[2]) or None)
            return Claim(state, validators=validators if validators else None)
        if state == "wait":
            return Claim(state, lease_left=max(int(answer[1]), 0) / 1000)
        return Claim(state)

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
            lock_token,
            *meta,
        ]
        return {"keys": keys, "args": args}

    def _revalidate_args(
        self, result: Unchanged, task_id: str, release: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        lock_key, lock_token = release or (self.keys.lock(result.kind, result.ident), "")
        keys = [
            self.keys.result(result.kind, result.ident),
            self.keys.meta(result.kind, result.ident),
            self.keys.events,
            lock_key,
        ]
        args = [
            int(result.fetched_at * 1000),
            self.events_maxlen,
            result.kind,
            result.ident,
            task_id,
            lock_token,
            result.etag or "",
            result.last_modified or "",
            "" if result.max_age is None else _seconds(result.max_age),
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
        stored = self.stored_many(kind, idents)
        return {ident for ident, meta in stored.items() if meta.fetched_at >= newer_than}

    def stored_many(self, kind: str, idents: list[str]) -> dict[str, Stored]:
        """The metadata of each stored result of `idents`, in one round trip.

        Only results whose value exists are given: a 304 can only bring forward a value
        that is there, and only such a value can be served as fresh.
        """
        pipe = self.redis.pipeline(transaction=False)
        for ident in idents:
            pipe.hmget(
                self.keys.meta(kind, ident), "fetched_at_ms", "max_age", "etag", "last_modified"
            )
            pipe.exists(self.keys.result(kind, ident))
        answers = pipe.execute()
        found: dict[str, Stored] = {}
        for index, ident in enumerate(idents):
            fetched_ms, max_age, etag, last_modified = answers[2 * index]
            if fetched_ms is None or not answers[2 * index + 1]:
                continue
            validators = Validators(_text(etag) or None, _text(last_modified) or None)
            found[ident] = Stored(
                fetched_at=int(fetched_ms) / 1000,
                max_age=float(max_age) if max_age is not None else None,
                validators=validators if validators else None,
            )
        return found

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


def _no_script(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)
