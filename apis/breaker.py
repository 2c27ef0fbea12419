"""A circuit breaker per upstream, shared by every worker process through Redis.

Why shared: an outage is a property of the upstream, not of one process. Sixteen threads
in each of several workers would otherwise each have to learn it on their own, and keep
hammering an upstream that is down with retries that cannot succeed.

States, kept in three small keys per upstream (names under `{prefix}circuit:{<service>}:`):

- closed: calls go through. A transient failure of a whole call (after the client's own
  retries: connection errors, timeouts, 429, 502/503/504) increments `failures`, which
  expires `window_seconds` after the first one; an answered call that began while a
  count was pending resets it. Reaching `failure_threshold` opens the circuit. Resetting
  on success means sporadic failures under load never add up to an outage; a partial
  outage is the retries' job.
- open: `open` exists, with a TTL of `cooldown_seconds`. Calls are refused at once with
  `CircuitOpen`, carrying the remaining cool-down, and no request is sent.
- half-open: `open` has expired but `tripped` is still set. The first caller takes
  `probe` (SET NX with a TTL, so a probe that dies frees it) and is let through; the
  others are refused until it ends. Its success closes the circuit (all keys go), a
  transient failure opens it for another cool-down.

Each decision is one Lua script, so concurrent callers in different processes see one
consistent state.

A healthy upstream costs the breaker almost no round trips. The check before a call
also says whether a failure count is pending; a success with nothing to reset records
nothing. And a process that found the circuit closed with nothing counted trusts that
reading for `CLOSED_TRUST_SECONDS` without asking again, unless one of its own calls
fails meanwhile. The price: when another process opens the circuit, this one may send
calls for up to that long, and each of those, failing, ends the trust at once.

Redis trouble never blocks a job, and never opens the gate either: when Redis cannot be
reached (or answers later than its one-second timeout), the process falls back to a
local consecutive-failure breaker (`LocalBreaker`: the same threshold and cool-down,
counted by this process alone), stops asking Redis for a second so that a slow Redis
does not add a timeout to every call, and says so once in the log and in
`apiworker_guard_fallback` (see `StateGuard`, which `apis.budget` shares).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisconn
from apis import errors
from apis.config import UpstreamConfig
from redisconn.settings import RedisTarget
from telemetry import tracing
from telemetry.metrics import CIRCUIT_REJECTIONS, CIRCUIT_TRANSITIONS, GUARD_FALLBACK

log = logging.getLogger("apis.breaker")

T = TypeVar("T")


# A tripped circuit is forgotten after this long without a probe (nobody called the
# upstream for a day): the next call then starts from closed.
_TRIPPED_SECONDS = 86_400.0
# How long a process trusts a "closed, nothing counted" reading before asking Redis again.
CLOSED_TRUST_SECONDS = 0.5
# How long to stop asking an unreachable Redis before trying it again.
_STATE_BACKOFF_SECONDS = 1.0

# KEYS: open, tripped, probe, failures. ARGV: probe token, probe ttl ms, cool-down ms.
# Returns {verdict, wait ms}: 1 = allowed (closed, a failure count pending), 3 = allowed
# (closed, nothing counted), 2 = allowed as the probe, 0 = refused.
# While a probe is out, the wait is at most one cool-down: a probe usually ends in far
# less than its key's TTL (which only guards against a probe that died).
_BEFORE = """
local open_ttl = redis.call('PTTL', KEYS[1])
if open_ttl > 0 then
    return {0, open_ttl}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
    if redis.call('EXISTS', KEYS[4]) == 1 then
        return {1, 0}
    end
    return {3, 0}
end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {2, 0}
end
return {0, math.max(math.min(redis.call('PTTL', KEYS[3]), tonumber(ARGV[3])), 1)}
"""

# KEYS: open, tripped, probe, failures.
# ARGV: outcome (ok | fail | abandon), probe token, threshold, window ms, cool-down ms,
# tripped ms. Returns 1 when this call opened the circuit, 2 when it closed it, else 0.
_AFTER = """
local outcome = ARGV[1]
if outcome == 'abandon' then
    if redis.call('GET', KEYS[3]) == ARGV[2] then
        redis.call('DEL', KEYS[3])
    end
    return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
local tripped = redis.call('EXISTS', KEYS[2]) == 1
if outcome == 'ok' then
    if tripped then
        redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
        return 2
    end
    redis.call('DEL', KEYS[4])
    return 0
end
if tripped then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[5])
    redis.call('DEL', KEYS[3])
    return 1
end
local failures = redis.call('INCR', KEYS[4])
if failures == 1 then
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
if failures >= tonumber(ARGV[3]) then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[5])
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[6])
    redis.call('DEL', KEYS[4])
    return 1
end
return 0
"""


def state_keys(prefix: str, service: str) -> list[str]:
    """The breaker's keys of one upstream: open, tripped, probe, failures (in that order;
    the worker's metrics read `open`). The service is their hash tag, so a script's keys
    share one Redis Cluster slot."""
    names = ("open", "tripped", "probe", "failures")
    return [f"{prefix}circuit:{{{service}}}:{name}" for name in names]


@dataclass(frozen=True)
class Permit:
    """What `before_call` learnt, for `after_call`: the probe token when the call is the
    half-open probe, and whether a failure count (or the probe) awaits a success."""

    probe: str | None = None
    counted: bool = False


_UNCOUNTED = Permit()
_COUNTED = Permit(counted=True)
#: A call allowed by this process's local breaker (Redis was away when it began).
_LOCAL = Permit(probe="local", counted=True)

_clients_lock = threading.Lock()
_clients: dict[RedisTarget, redis.Redis] = {}


def shared_redis(target: RedisTarget) -> redis.Redis:
    """One client per Redis per process for the guards' state; redis-py's pool is
    thread-safe and rebuilt after a fork.

    Short timeouts and no redis-py retries: a guard that cannot answer within a second
    must fail open rather than hold the job (redis-py's default would retry ten times).
    """
    client = _clients.get(target)
    if client is None:
        with _clients_lock:
            client = _clients.get(target)
            if client is None:
                client = redisconn.client(
                    target,
                    socket_timeout=1.0,
                    socket_connect_timeout=1.0,
                    health_check_interval=30,
                    retry=Retry(NoBackoff(), 0),
                )
                _clients[target] = client
    return client


class StateGuard:
    """Runs the guards' Redis calls so that Redis trouble means "use local state", never
    an error.

    After a failure Redis is left alone for a second (calls get the fallback answer at
    once, and `down` says so: the guard then decides with its local state). Going down
    and coming back are each logged once, and `apiworker_guard_fallback` shows the state.
    """

    def __init__(
        self,
        what: str,
        *,
        service: str = "",
        guard: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._labels = (service, guard)
        self._clock = clock
        self._skip_until = 0.0
        self._down = False

    @property
    def down(self) -> bool:
        """Whether Redis failed the last call and is being left alone for now."""
        return self._down and self._clock() < self._skip_until

    def run(self, operation: Callable[[], T], fallback: T) -> T:
        now = self._clock()
        if now < self._skip_until:
            return fallback
        try:
            result = operation()
        except (redis.RedisError, OSError) as exc:
            self._skip_until = now + _STATE_BACKOFF_SECONDS
            if not self._down:
                self._down = True
                if self._labels[0]:
                    GUARD_FALLBACK.labels(*self._labels).set(1)
                log.warning(
                    "%s unavailable, using this process's local state: %s",
                    self.what,
                    type(exc).__name__,
                )
            return fallback
        if self._down:
            self._down = False
            if self._labels[0]:
                GUARD_FALLBACK.labels(*self._labels).set(0)
            log.warning("%s answers again: shared state back", self.what)
        return result


class LocalBreaker:
    """The breaker of one process while Redis cannot be asked: `threshold` consecutive
    transient failures open it for `cooldown` seconds; then one failure reopens it and
    one success closes it.

    Calls end after they start, so threads that all started before the first failure
    came back would each fail on their own: once a failure is counted, a call is let
    through only while the failures plus the calls still in flight stay below the
    threshold. So this process sends at most `threshold` failing calls past those
    already under way.
    """

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float]) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._in_flight = 0
        self._open_until = 0.0

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def refused_for(self) -> float:
        """Seconds to wait before a call may go (0: it may, and is counted in flight)."""
        with self._lock:
            wait = self._open_until - self._clock()
            if wait > 0:
                return wait
            if self._failures and self._failures + self._in_flight >= self._threshold:
                return _STATE_BACKOFF_SECONDS
            self._in_flight += 1
            return 0.0

    def record(self, outcome: str) -> bool:
        """Count a call's outcome; True when it opened the circuit."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if outcome == "ok":
                self._failures = 0
                return False
            if outcome != "fail":
                return False
            self._failures += 1
            if self._failures >= self._threshold and self._clock() >= self._open_until:
                self._open_until = self._clock() + self._cooldown
                self._failures = self._threshold - 1
                return True
            return False

    def ended(self) -> None:
        """A call counted by Redis ended (its outcome went there, not here)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)


class CircuitBreaker:
    """The breaker of one upstream; a no-op when its threshold is 0 or no Redis is set."""

    def __init__(
        self,
        config: UpstreamConfig,
        client: redis.Redis | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = config.circuit
        self.service = config.service
        self.policy = policy
        if client is None and config.state_redis and policy.failure_threshold > 0:
            client = shared_redis(config.state_redis)
        self.enabled = client is not None and policy.failure_threshold > 0
        self._redis = client
        self.keys = state_keys(config.state_key_prefix, config.service)
        # One probe call may take every attempt of the client, each up to the total
        # deadline, and wait for rate-limit tokens: the probe key outlives all of that.
        token_waits = config.rate_limit.max_wait if config.rate_limit.rate > 0 else 0.0
        probe_seconds = (
            config.retry.max_seconds + config.total_timeout + token_waits * config.retry.attempts
        )
        self._probe_ms = max(1000, int(probe_seconds * 1000))
        self._guard = StateGuard(
            f"circuit breaker state of {config.service}",
            service=config.service,
            guard="breaker",
            clock=clock,
        )
        self._local = LocalBreaker(policy.failure_threshold, policy.cooldown_seconds, clock)
        self._clock = clock
        # Until when this process trusts its last "closed, nothing counted" reading (a
        # float written whole under the GIL: threads may race on it only harmlessly).
        self._trusted_until = 0.0
        if client is not None:
            self._before = client.register_script(_BEFORE)
            self._after = client.register_script(_AFTER)

    def before_call(self, method: str = "", path: str = "") -> Permit:
        """Allow the call (the permit goes to `after_call`), or raise `CircuitOpen`."""
        if not self.enabled:
            return _UNCOUNTED
        now = self._clock()
        if self._guard.down:
            return self._local_before(method, path)
        if now < self._trusted_until:
            self._local.started()
            return _UNCOUNTED
        token = secrets.token_hex(8)
        verdict, wait_ms = self._guard.run(
            lambda: self._before(
                keys=self.keys,
                args=[token, self._probe_ms, int(self.policy.cooldown_seconds * 1000)],
            ),
            [-1, 0],  # Redis unreachable: this process's own breaker decides
        )
        if verdict == -1:
            return self._local_before(method, path)
        if verdict == 3:
            self._trusted_until = now + CLOSED_TRUST_SECONDS
            self._local.started()
            return _UNCOUNTED
        if verdict == 1:
            self._local.started()
            return _COUNTED
        if verdict == 2:
            log.info("circuit half-open service=%s: sending one probe call", self.service)
            self._local.started()
            return Permit(probe=token, counted=True)
        raise self._refused(int(wait_ms) / 1000, method, path)

    def _local_before(self, method: str, path: str) -> Permit:
        wait = self._local.refused_for()
        if wait > 0:
            raise self._refused(wait, method, path)
        return _LOCAL

    def _refused(self, wait: float, method: str, path: str) -> errors.CircuitOpen:
        CIRCUIT_REJECTIONS.labels(self.service).inc()
        tracing.add_event(
            tracing.CIRCUIT_OPEN,
            {"apiworker.upstream": self.service, "apiworker.retry_after_s": wait},
        )
        return errors.CircuitOpen(
            "circuit open: upstream failing, call not sent",
            self.service,
            method,
            path,
            None,
            "",
            wait,
        )

    def after_call(self, permit: Permit, exc: BaseException | None) -> None:
        """Record how a call allowed by `before_call` ended (None: it succeeded)."""
        if not self.enabled:
            return
        outcome = _outcome(exc)
        if permit is _LOCAL or self._guard.down:
            self._record_locally(outcome, exc)
            return
        self._local.ended()
        if outcome == "abandon" and permit.probe is None:
            return
        if outcome == "ok" and not permit.counted:
            return  # closed with nothing counted when the call began: nothing to reset
        if outcome == "fail":
            self._trusted_until = 0.0  # ask Redis again before the next call
        policy = self.policy
        args: list[str | int] = [
            outcome,
            permit.probe or "",
            policy.failure_threshold,
            int(policy.window_seconds * 1000),
            int(policy.cooldown_seconds * 1000),
            int(max(_TRIPPED_SECONDS, 10 * policy.cooldown_seconds) * 1000),
        ]
        changed = self._guard.run(lambda: self._after(keys=self.keys, args=args), -1)
        if changed == -1:
            self._local.started()  # ended above; counted again by its local record
            self._record_locally(outcome, exc)
        elif changed == 1:
            CIRCUIT_TRANSITIONS.labels(self.service, "open").inc()
            log.warning(
                "circuit opened service=%s: calls refused for %.0fs (error=%s)",
                self.service,
                policy.cooldown_seconds,
                type(exc).__name__,
            )
        elif changed == 2:
            CIRCUIT_TRANSITIONS.labels(self.service, "closed").inc()
            log.warning("circuit closed service=%s: the upstream answers again", self.service)

    def _record_locally(self, outcome: str, exc: BaseException | None) -> None:
        if self._local.record(outcome):
            CIRCUIT_TRANSITIONS.labels(self.service, "open").inc()
            log.warning(
                "circuit opened locally service=%s: calls refused for %.0fs (error=%s)",
                self.service,
                self.policy.cooldown_seconds,
                type(exc).__name__,
            )

    def state(self) -> str:
        """The state as Redis has it now: closed, open or half-open (for tests and tools)."""
        if self._redis is None:
            return "closed"
        open_key, tripped_key = self.keys[0], self.keys[1]
        if self._redis.exists(open_key):
            return "open"
        return "half-open" if self._redis.exists(tripped_key) else "closed"


def _outcome(exc: BaseException | None) -> str:
    """What a call's ending says about the upstream: ok, fail, or nothing (abandon)."""
    if exc is None:
        return "ok"
    if isinstance(exc, errors.HeldBack) or not isinstance(exc, errors.UpstreamError):
        return "abandon"  # no answer was waited for: it says nothing about the upstream
    if isinstance(exc, errors.RateLimited):
        return "ok"  # it answered, asking for less: the budget's signal, not an outage
    if exc.is_transient:
        return "fail"
    if isinstance(exc, errors.NotConfigured | errors.InvalidParameter):
        return "abandon"
    return "ok"  # the upstream answered (404, 401, a bad body): it is up
