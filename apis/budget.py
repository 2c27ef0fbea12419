"""A budget per upstream, shared by the whole fleet: a rate and a concurrency, in Redis.

Why shared: an upstream's limit applies to all of our traffic together, and the number
of workers and threads changes with the deployment. A limit per process would allow
`processes x limit`.

- **Rate.** A token bucket refilled by Redis's own clock (hosts with skewed clocks agree),
  holding half a second's worth by default: an upstream's own bucket is usually a whole
  second's, and the half left over absorbs the jitter of requests on their way there,
  which a bucket of the same size turns into 429s.
  An on-demand call that finds no token reserves the next one (the bucket goes below
  zero) and waits for it, up to `max_wait` (at most a second): callers queue at
  `1 / rate` intervals without polling. Beyond that nothing is reserved and the call is
  held back (`Throttled`); the task layer puts the job off instead of holding a thread.
- **Classes.** A bulk call (a beat schedule's job, a fan-out child, a job its producer
  marked bulk: `job_class`, which the task layer sets per job) never reserves ahead: it
  takes a token only when one is free now, so on-demand reservations always come first.
  To keep a flood of on-demand calls from starving a refresh, bulk also has a bucket of
  its own at `bulk_share` of the rate, whose tokens it may take even when on-demand
  callers have reserved the rest.
- **Concurrency.** With `concurrency` > 0, a sorted set holds one permit per request in
  flight (scored by its expiry, so a dead holder's permit lapses); a call waits for a
  free permit like for a token.
- **Adaptive (AIMD).** A `429`, or a `503` with `Retry-After`, pauses the upstream for
  the whole fleet for the time it asked (the bucket is empty until then) and cuts the
  rate by `DECREASE` (at most once per pause, so a burst of 429s is one signal); the
  rate then grows back by `INCREASE` of itself per second (at least `MIN_INCREASE`),
  up to the configured rate, the ceiling. A call whose reserved token predates a pause
  asks again. With `adaptive` off an upstream with no rate configured has no budget at
  all. Each change of the rate is logged on one line and exported
  (`apiworker_budget_rate`).
- **Slow start.** With no rate configured and nothing learnt, the fleet does not start
  unbounded: the requests in flight when the first 429 comes are all refused too, and
  at full speed that was most of a run's 429s. It starts at `PROBE_RATE` and doubles
  every `SLOW_START_DOUBLING` seconds while it asks for at least `SLOW_START_USED` of it
  (an idle fleet proves nothing), in a bucket of a tenth of a second (saved-up tokens
  sent at once would land on a limit just met): TCP's slow start, paced by rate rather
  than a window, because an upstream's token bucket refuses on rate. The first 429
  leaves half of what the fleet sent in the last second (TCP's ssthresh: half the
  flight), and the additive increase above takes over. An upstream that reaches
  `OPEN_RATE` without a 429, or passes `OPEN_UNUSED` and then finds the fleet asking
  for less than `SLOW_START_USED` of it (it took all this fleet sends, and pacing it
  further would cost a round trip per call for nothing), is unbounded: a process then
  trusts that for `UNBOUNDED_TRUST_SECONDS` without a round trip per call, and a later
  first 429 starts from the larger of half of what the fleet sent in the last second
  and what the upstream accepted in it (this process's count of answers times the
  processes sharing the budget). The phase is fleet-wide in Redis, so a new process
  does not start over; and each process sends what it last knew with every call, so a
  Redis that lost the state (a restart without persistence, a flush) gets it back
  instead of a new probe.
- **Fails safe.** When Redis is slow or away the process falls back to a local bucket
  at the last known rate divided by the processes that share it (counted in Redis
  while it answered), logged once per outage and shown by `apiworker_guard_fallback`.

Hand-written rather than a library: limits (the `limits` package) and pyrate-limiter
keep fixed or sliding windows in Redis, but none reserves ahead, keeps a class share,
or adapts its rate to the upstream's answers; one Lua script per decision does all of
it in one round trip.

Every HTTP attempt takes a token, retries included, since each one reaches the upstream.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import redis

from apis import errors
from apis.breaker import StateGuard, shared_redis
from apis.config import UpstreamConfig
from telemetry import tracing
from telemetry.metrics import (
    BUDGET_CONFIGURED_RATE,
    BUDGET_IN_FLIGHT,
    BUDGET_PAUSES,
    BUDGET_RATE,
    BUDGET_WAITING,
    RATE_LIMIT_DEFERRALS,
    RATE_LIMIT_WAITS,
)

log = logging.getLogger("apis.budget")

ON_DEMAND = "on_demand"
BULK = "bulk"
#: The class of the job the current thread runs (the task layer sets it per job).
job_class: ContextVar[str] = ContextVar("apiworker_job_class", default=ON_DEMAND)

#: The rate is cut to this share of itself by a 429 (TCP CUBIC's factor).
DECREASE = 0.7
#: ... and grows back by this share of itself per second, at least MIN_INCREASE/s.
INCREASE = 0.05
MIN_INCREASE = 0.5
#: The lowest rate a cut may reach (requests/s).
MIN_RATE = 0.2
#: A 429 that says nothing of how long: paused this long.
DEFAULT_PAUSE = 1.0
#: A process counts as sharing the budget while it asked for a token this recently.
_PROCESS_SECONDS = 10.0
#: How long a permit of the concurrency limit outlives its call at most.
_PERMIT_SECONDS = 60.0
#: How long a process trusts an "unbounded" reading before asking Redis again: an
#: upstream found unbounded by its slow start costs no round trip per call.
UNBOUNDED_TRUST_SECONDS = 0.1
#: Slow start of an upstream with no rate configured and nothing learnt: the fleet starts
#: at PROBE_RATE requests/s and doubles it every SLOW_START_DOUBLING seconds while it
#: asks for at least SLOW_START_USED of it (an idle fleet proves nothing), until the
#: first 429 (then SLOW_START_EXIT of what the fleet sent, growing additively) or until
#: it reaches OPEN_RATE with none (then unbounded: no round trip per call).
PROBE_RATE = 20.0
SLOW_START_DOUBLING = 3.0
SLOW_START_USED = 0.5
OPEN_RATE = 1000.0
#: ... or once it is past OPEN_UNUSED requests/s and the fleet asks for less than
#: SLOW_START_USED of it: the upstream took what this fleet sends without a 429.
OPEN_UNUSED = 200.0
#: The probe's bucket holds this many seconds' worth (a configured or learnt rate's, half
#: a second's): saved-up tokens sent at once would land on a limit just met.
SLOW_START_BURST = 0.1
#: What a 429 met in slow start leaves of what the fleet sent in the last second (at
#: most of the probe rate): TCP's ssthresh, half the flight.
SLOW_START_EXIT = 0.5
#: The slow start's phases, as the state hash and the take script's reply name them.
LEARNT, SLOW, OPEN = "learnt", "slow", "open"
_MODES = (LEARNT, SLOW, OPEN)
#: Poll step of a call that waits without a reservation (bulk, or no free permit).
_POLL_SECONDS = 0.02

# KEYS: state hash, permits zset, processes zset.
# ARGV: ceiling, capacity (0: half a second's worth), max wait ms, class, bulk share,
# concurrency, permit id, permit ttl ms, process id, what this process last knew of a
# rate not configured (rate, phase: '' none: the start when the state is gone), and
# '1' when the budget learns (slow start; else unbounded until a 429).
# Returns {wait ms, rate in milli-requests/s, processes, phase (0 learnt or configured,
# 1 slow start, 2 open)}: wait 0 = go now, > 0 = a token is reserved, go after that
# long; < 0 = nothing taken, ask again after -wait.
_TAKE = (
    (
        """
local ceiling = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local bulk = ARGV[4] == 'bulk'
local share = tonumber(ARGV[5])
local concurrency = tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZADD', KEYS[3], now, ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - @PROCESS_MS@)
redis.call('PEXPIRE', KEYS[3], 60000)
local processes = redis.call('ZCARD', KEYS[3])
local s = redis.call('HMGET', KEYS[1], 'rate', 'tokens', 'at', 'grown', 'btokens', 'bat',
  'win', 'win_n', 'prev_n', 'phase', 'ask_n', 'ask_prev')
local rate = tonumber(s[1]) or 0
local tokens = tonumber(s[2])
local at = tonumber(s[3]) or now
local grown = tonumber(s[4]) or now
local btokens = tonumber(s[5])
local bat = tonumber(s[6]) or now
local phase = s[10]
if rate == 0 and ceiling > 0 then rate = ceiling end
if ceiling > 0 and rate > ceiling then rate = ceiling end
-- what the fleet sent in the last second (the tokens taken; a first 429 starts from
-- it) and asked for (slow start grows only while the fleet asks for the rate)
local win = tonumber(s[7]) or now
local win_n = tonumber(s[8]) or 0
local prev_n = tonumber(s[9]) or 0
local ask_n = tonumber(s[11]) or 0
local ask_prev = tonumber(s[12]) or 0
if now - win >= 1000 then
  if now - win < 2000 then
    prev_n = win_n
    ask_prev = ask_n
  else
    prev_n = 0
    ask_prev = 0
  end
  win = now
  win_n = 0
  ask_n = 0
end
ask_n = ask_n + 1
local asked = math.max(ask_n, ask_prev)
if ceiling == 0 then
  redis.call('HSET', KEYS[1], 'win', win, 'win_n', win_n, 'prev_n', prev_n,
    'ask_n', ask_n, 'ask_prev', ask_prev)
  if not phase then
    -- nothing learnt (or the state is gone): what this process knew, else slow start
    if rate > 0 then
      phase = 'learnt'
    elseif ARGV[11] == 'open' or ARGV[12] ~= '1' then
      phase = 'open'
    elseif ARGV[11] ~= '' and tonumber(ARGV[10]) > 0 then
      phase = ARGV[11]
      rate = tonumber(ARGV[10])
    else
      phase = 'slow'
      rate = @PROBE_RATE@
    end
    grown = now
    redis.call('HSET', KEYS[1], 'phase', phase)
  end
end
if rate > 0 and now > grown then
  if phase == 'slow' then
    -- slow start: doubling every SLOW_START_DOUBLING while the fleet uses the rate
    local used = asked >= rate * @SLOW_START_USED@
    if used then
      rate = rate * math.pow(2, (now - grown) / @SLOW_START_DOUBLING_MS@)
    end
    -- open: no limit met up to OPEN_RATE, or the probe outgrew what the fleet asks for
    -- once past OPEN_UNUSED (pacing it further would protect nothing it asked for)
    if rate >= @OPEN_RATE@ or (not used and rate >= @OPEN_UNUSED@) then
      rate = 0
      phase = 'open'
      redis.call('HSET', KEYS[1], 'phase', phase)
    end
  else
    -- additive increase, from the end of the last pause
    local step = math.max(rate * @INCREASE@, @MIN_INCREASE@) * (now - grown) / 1000
    if ceiling > 0 then rate = math.min(ceiling, rate + step) else rate = rate + step end
  end
  grown = now
end
local code = 0
if ceiling == 0 and phase == 'slow' then code = 1 elseif rate == 0 then code = 2 end
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then
    return {-20, math.floor(rate * 1000), processes, code}
  end
end
local wait = 0
if rate > 0 then
  local cap = capacity
  if cap <= 0 then
    if code == 1 then
      -- a probe is sent evenly: a burst of saved tokens would land on a limit just met
      cap = math.max(1, math.ceil(rate * @SLOW_START_BURST@))
    else
      cap = math.max(1, math.ceil(rate / 2))
    end
  end
  if tokens == nil then tokens = cap end
  if now > at then
    tokens = math.min(cap, tokens + (now - at) * rate / 1000)
    at = now
  end
  local brate = rate * share
  local bcap = math.max(1, math.ceil(brate))
  if btokens == nil then btokens = bcap end
  if now > bat then
    btokens = math.min(bcap, btokens + (now - bat) * brate / 1000)
    bat = now
  end
  -- when the next whole token is there (`at` is in the future during a pause)
  local ready = at + math.max(0, 1 - tokens) * 1000 / rate
  if bulk then
    if now >= at and tokens >= 1 then
      tokens = tokens - 1
    elseif now >= bat and btokens >= 1 then
      btokens = btokens - 1
      tokens = tokens - 1
    else
      local hint = ready - now
      if brate > 0 then
        hint = math.min(hint, math.max(bat - now, 0) + (1 - btokens) * 1000 / brate)
      end
      return {-math.max(1, math.ceil(hint)), math.floor(rate * 1000), processes, code}
    end
  else
    wait = math.max(0, math.ceil(ready - now))
    if wait > max_wait then
      return {-wait, math.floor(rate * 1000), processes, code}
    end
    tokens = tokens - 1
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at),
    'btokens', tostring(btokens), 'bat', tostring(bat))
end
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'grown', tostring(grown))
if ceiling == 0 then redis.call('HINCRBY', KEYS[1], 'win_n', 1) end
redis.call('PEXPIRE', KEYS[1], 86400000)
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + wait + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[8]) * 2)
end
return {wait, math.floor(rate * 1000), processes, code}
"""
    )
    .replace("@INCREASE@", repr(INCREASE))
    .replace("@PROBE_RATE@", repr(PROBE_RATE))
    .replace("@SLOW_START_USED@", repr(SLOW_START_USED))
    .replace("@SLOW_START_DOUBLING_MS@", repr(SLOW_START_DOUBLING * 1000))
    .replace("@OPEN_RATE@", repr(OPEN_RATE))
    .replace("@OPEN_UNUSED@", repr(OPEN_UNUSED))
    .replace("@SLOW_START_BURST@", repr(SLOW_START_BURST))
    .replace("@MIN_INCREASE@", repr(MIN_INCREASE))
    .replace("@PROCESS_MS@", str(int(_PROCESS_SECONDS * 1000)))
)

# KEYS: state hash. ARGV: pause ms, ceiling, decrease factor, min rate, the requests the
# upstream accepted and the fleet sent in the last second (the caller's estimates; 0:
# unknown).
# Returns {1 when this signal cut the rate else 0, old rate milli, new rate milli,
# pause left ms}.
_PAUSE = (
    """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local pause = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'rate', 'at', 'cut', 'win_n', 'prev_n', 'win', 'phase')
local rate = tonumber(s[1]) or 0
local at = tonumber(s[2]) or now
local cut = tonumber(s[3]) or 0
local until_ms = math.max(at, now + pause)
local old = rate
local changed = 0
if now >= cut then
  if ceiling == 0 and s[7] == 'slow' and rate > 0 then
    -- the first limit met in slow start: half of what the fleet sent in the last second
    -- (TCP's ssthresh, half the flight size), at most half the probe rate; the cut
    -- below must not cut it again
    local sent = tonumber(s[4]) or 0
    if now - (tonumber(s[6]) or now) < 2000 then sent = math.max(sent, tonumber(s[5]) or 0) end
    if sent <= 0 then sent = rate end
    rate = math.min(rate, sent) * @SLOW_START_EXIT@ / tonumber(ARGV[3])
  elseif rate == 0 then
    rate = ceiling
    if rate == 0 then
      local win = tonumber(s[6]) or now
      local sent = tonumber(s[4]) or 0
      if now - win < 500 then sent = math.max(sent, tonumber(s[5]) or 0) end
      -- calls sent without asking (a process trusting "unbounded"), as it counted them
      sent = math.max(sent, tonumber(ARGV[6]) or 0)
      -- the first limit found: half of what the fleet sent (as TCP leaves slow start),
      -- or what the upstream accepted in the last second when the callers counted more
      rate = math.max(1, sent / 2, tonumber(ARGV[5]) or 0) / tonumber(ARGV[3])
    end
  end
  rate = math.max(tonumber(ARGV[4]), rate * tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'cut', tostring(until_ms),
    'phase', 'learnt')
  changed = 1
end
local u = tostring(until_ms)
redis.call('HSET', KEYS[1], 'tokens', '0', 'btokens', '0', 'at', u, 'bat', u, 'grown', u,
  'paused', u)
redis.call('PEXPIRE', KEYS[1], 86400000)
return {changed, math.floor(old * 1000), math.floor(rate * 1000), until_ms - now}
"""
).replace("@SLOW_START_EXIT@", repr(SLOW_START_EXIT))

# KEYS: state hash. Returns the ms left of the fleet's pause (0: none).
_PAUSE_LEFT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused')) or 0
return math.max(0, paused - now)
"""

# KEYS: state hash, permits zset. Returns {rate milli-requests/s, pause left ms, permits
# in flight}: what `apiworker top` and `health` show.
_READ = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'rate', 'paused')
local rate = tonumber(s[1]) or 0
local paused = tonumber(s[2]) or 0
local in_flight = redis.call('ZCOUNT', KEYS[2], now, '+inf')
return {math.floor(rate * 1000), math.max(0, paused - now), in_flight}
"""

# KEYS: permits zset. ARGV: permit id.
_RELEASE = "return redis.call('ZREM', KEYS[1], ARGV[1])"


def budget_keys(prefix: str, service: str) -> list[str]:
    """The budget's keys of one upstream: state, permits, processes (`apiworker top`
    and the gauges read the state hash). The service is their hash tag, so a script's
    keys share one Redis Cluster slot."""
    return [f"{prefix}budget:{{{service}}}:{name}" for name in ("state", "permits", "processes")]


@dataclass(frozen=True)
class BudgetState:
    """An upstream's budget as Redis has it now (for tools: `apiworker top`, `health`)."""

    service: str
    #: The fleet's current rate, requests/s (0: unbounded: none configured or learnt).
    rate: float
    #: Seconds left of a pause the upstream asked for (0: not paused).
    paused_for: float
    #: Requests in flight holding a permit of the concurrency limit.
    in_flight: int


def read_state(client: redis.Redis, prefix: str, service: str) -> BudgetState:
    """One round trip: the budget of `service` under the key prefix `prefix`."""
    state_key, permits_key, _ = budget_keys(prefix, service)
    rate, paused, in_flight = (int(v) for v in client.eval(_READ, 2, state_key, permits_key))
    return BudgetState(service, rate / 1000, paused / 1000, in_flight)


@dataclass(frozen=True)
class Ticket:
    """One request's share of the budget; `release` it when the answer is in."""

    permit: str = ""


_FREE = Ticket()


class SecondCounter:
    """Events of the last whole second, counted cheaply (two one-second buckets)."""

    def __init__(self) -> None:
        self._second = 0
        self._current = 0
        self._previous = 0

    def add(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._previous = self._current if second == self._second + 1 else 0
            self._second, self._current = second, 0
        self._current += 1

    def last_second(self, now: float) -> int:
        second = int(now)
        if second == self._second:
            return max(self._previous, self._current)
        return self._current if second == self._second + 1 else 0


class LocalBucket:
    """The fallback while Redis cannot be asked: this process's share of the rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = 1.0
        self._at = clock()

    def take(self, rate: float, max_wait: float) -> float:
        """Reserve the next token at `rate`/s and return the wait before it (s); a wait
        beyond `max_wait` reserves nothing and is returned negative."""
        with self._lock:
            now = self._clock()
            capacity = max(1.0, math.ceil(rate / 2))  # as the shared bucket's default
            self._tokens = min(capacity, self._tokens + (now - self._at) * rate)
            self._at = now
            wait = max(0.0, (1 - self._tokens) / rate)
            if wait > max_wait:
                return -wait
            self._tokens -= 1
            return wait


class Budget:
    """The budget of one upstream; a no-op when no Redis is set for shared state, or
    when it has no rate or concurrency configured and does not learn one
    (BUDGET_ADAPTIVE=false)."""

    def __init__(
        self,
        config: UpstreamConfig,
        client: redis.Redis | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = config.rate_limit
        self.service = config.service
        self.policy = policy
        # No budget at all for an upstream with no rate, no concurrency and no learning.
        wanted = policy.rate > 0 or policy.concurrency > 0 or policy.adaptive
        if client is None and config.state_redis and wanted:
            client = shared_redis(config.state_redis)
        self.enabled = client is not None and wanted
        self.keys = budget_keys(config.state_key_prefix, config.service)
        self._sleep = sleep
        self._clock = clock
        self._process = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self._guard = StateGuard(
            f"budget of {config.service}", service=config.service, guard="budget", clock=clock
        )
        self._local = LocalBucket(clock)
        #: The fleet's rate as last read (requests/s, 0 = unbounded) and its sharers.
        self.rate = policy.rate
        self.processes = 1
        #: Where learning a rate not configured stands, as last read ('' nothing read
        #: yet): passed with each call, so a fleet whose Redis lost the state (a restart
        #: without persistence, a flush) resumes from it instead of starting over.
        self.phase = ""
        self._opened = False
        #: Until when (this process's clock) the fleet's budget is known to have no token,
        #: and to be paused by the upstream.
        self.busy_until = 0.0
        self.paused_until = 0.0
        self._accepted = SecondCounter()
        self._sent = SecondCounter()
        self._unbounded_until = 0.0
        BUDGET_CONFIGURED_RATE.labels(self.service).set(policy.rate)
        BUDGET_RATE.labels(self.service).set(policy.rate)
        if client is not None:
            self._take = client.register_script(_TAKE)
            self._pause = client.register_script(_PAUSE)
            self._release = client.register_script(_RELEASE)
            self._pause_left = client.register_script(_PAUSE_LEFT)

    # -- taking ---------------------------------------------------------------------------

    def acquire(self, method: str = "", path: str = "") -> Ticket:
        """Wait (at most `max_wait`) for a token and a permit, or raise `Throttled`."""
        if not self.enabled:
            return _FREE
        klass = job_class.get()
        if self._clock() < self._unbounded_until:
            self._sent.add(self._clock())  # for the first 429 (`answered`)
            return _FREE
        permit = secrets.token_hex(8) if self.policy.concurrency > 0 else ""
        deadline = self._clock() + self.policy.max_wait
        waited = False
        BUDGET_WAITING.labels(self.service, klass).inc()
        try:
            while True:
                bound = max(0.0, deadline - self._clock()) if waited else self.policy.max_wait
                reply = self._ask(klass, permit, bound)
                if reply is None:  # Redis away or slow: this process's share, locally
                    local = self._local_wait()
                    if local < 0:
                        raise self._throttled(-local, method, path)
                    self._wait(local, method=method, path=path)
                    return _FREE
                wait_ms, rate_milli, processes, phase = (int(value) for value in reply)
                self._note_rate(rate_milli / 1000, processes, phase=_MODES[phase])
                now = self._clock()
                if rate_milli == 0 and not permit:
                    # Unbounded (slow start met no limit, or learning is off): trust that
                    # for a while without a round trip per call, as the breaker trusts
                    # "closed".
                    self._unbounded_until = now + UNBOUNDED_TRUST_SECONDS
                    self._sent.add(now)
                if wait_ms >= 0:
                    if wait_ms:
                        self.busy_until = max(self.busy_until, now + wait_ms / 1000)
                        self._wait(wait_ms / 1000, method=method, path=path)
                        if self._paused_meanwhile():
                            # The upstream paused the fleet while this call waited: its
                            # token predates the pause. Ask again (or be held back).
                            waited = True
                            continue
                    elif waited:
                        RATE_LIMIT_WAITS.labels(self.service).inc()
                    if permit:
                        BUDGET_IN_FLIGHT.labels(self.service).inc()
                    return Ticket(permit)
                step = -wait_ms / 1000
                if klass == ON_DEMAND:
                    self.busy_until = now + step
                if now + step > deadline:
                    raise self._throttled(step, method, path)
                waited = True
                self._sleep(max(step, _POLL_SECONDS))
        finally:
            BUDGET_WAITING.labels(self.service, klass).dec()

    def _paused_meanwhile(self) -> bool:
        """Whether a pause began while a reserved call waited: this process knows it, or
        Redis says so. One more round trip per waiting call, which only calls the budget
        already spaces out make: at most the rate."""
        if self.paused_until > self._clock():
            return True
        left = self._guard.run(lambda: self._pause_left(keys=self.keys[:1]), 0)
        if left:
            self.paused_until = self._clock() + int(left) / 1000
        return bool(left)

    def _throttled(self, wait: float, method: str, path: str) -> errors.Throttled:
        RATE_LIMIT_DEFERRALS.labels(self.service).inc()
        return errors.Throttled(
            f"budget of {self.rate:g}/s: next token in {wait:.1f}s, "
            f"beyond the {self.policy.max_wait:g}s wait bound",
            self.service,
            method,
            path,
            None,
            "",
            wait,
        )

    def release(self, ticket: Ticket, outcome: str = "") -> None:
        """The request is answered (`outcome`: its status, or an error's name): its
        permit of the concurrency limit is free again, and an accepted one is counted."""
        if outcome[:1] in ("2", "3"):
            self._accepted.add(self._clock())
        if ticket.permit:
            BUDGET_IN_FLIGHT.labels(self.service).dec()
            self._guard.run(lambda: self._release(keys=[self.keys[1]], args=[ticket.permit]), None)

    def _ask(self, klass: str, permit: str, max_wait: float) -> list[int] | None:
        policy = self.policy
        args: list[str | int] = [
            repr(policy.rate),
            policy.burst,
            int(max_wait * 1000),
            klass,
            repr(policy.bulk_share),
            policy.concurrency,
            permit,
            int(_PERMIT_SECONDS * 1000),
            self._process,
            repr(self.rate),
            self.phase,
            "1" if policy.adaptive else "0",
        ]
        reply: list[int] | None = self._guard.run(
            lambda: self._take(keys=self.keys, args=args), None
        )
        return reply

    def _local_wait(self) -> float:
        rate = self.rate or self.policy.rate
        if rate <= 0:
            return 0.0  # no rate known: nothing to divide (the breaker still guards)
        return self._local.take(rate / max(1, self.processes), self.policy.max_wait)

    def _wait(self, seconds: float, *, method: str, path: str) -> None:
        if seconds <= 0:
            return
        RATE_LIMIT_WAITS.labels(self.service).inc()
        tracing.add_event(
            tracing.RATE_LIMIT_WAIT,
            {"apiworker.upstream": self.service, "apiworker.wait_s": seconds},
        )
        self._sleep(seconds)

    def held(self) -> bool:
        """Whether the budget binds: the fleet is paused, or on-demand calls are queued
        for tokens (as this process last heard). A job of this upstream taken now would
        only queue behind them, holding a thread."""
        return self.enabled and self.busy_until > self._clock()

    def blocked(self) -> bool:
        """Whether no call could get a token within the wait bound now, as this process
        last heard: the upstream paused the fleet, or a call found the next token
        beyond `max_wait`. Narrower than `held`, which is also true while on-demand
        calls queue for tokens inside the bound; RabbitMQ's admission stops consuming
        only on this (worker/amqp_admission.py)."""
        if not self.enabled:
            return False
        now = self._clock()
        return self.paused_until > now or self.busy_until - now >= self.policy.max_wait

    def room(self) -> int | None:
        """How many of this upstream's jobs this process may hold at once: its share of
        half of what the fleet's rate serves within the wait bound, None while the rate
        is unbounded. Half: until this process first hears how many share the budget it
        counts itself alone, and a fleet starting together must still not queue past the
        bound."""
        if not self.enabled or self.rate <= 0:
            return None
        share = self.rate * self.policy.max_wait * 0.5 / max(1, self.processes)
        return max(1, int(share))

    @property
    def in_fallback(self) -> bool:
        """Whether this process runs on its local share because Redis is slow or away."""
        return self._guard.down

    # -- the upstream's signals ----------------------------------------------------------

    def answered(self, status: int, retry_after: float | None) -> float | None:
        """Learn from an answer: a 429, or a 503 with Retry-After, pauses the fleet and
        cuts the rate. Returns the pause (s), None for any other answer."""
        if not self.enabled or not (status == 429 or (status == 503 and retry_after)):
            return None
        BUDGET_PAUSES.labels(self.service, str(status)).inc()
        pause = DEFAULT_PAUSE if retry_after is None else max(0.0, retry_after)
        args: list[str | int] = [
            int(pause * 1000),
            repr(self.policy.rate),
            repr(DECREASE),
            repr(MIN_RATE),
            self._accepted.last_second(self._clock()) * max(1, self.processes),
            self._sent.last_second(self._clock()) * max(1, self.processes),
        ]
        self._unbounded_until = 0.0
        reply = self._guard.run(lambda: self._pause(keys=self.keys[:1], args=args), None)
        self.busy_until = self._clock() + pause
        self.paused_until = max(self.paused_until, self.busy_until)
        if reply is None:
            return pause
        changed, old, new, left = (int(value) for value in reply)
        if changed:
            log.warning(
                "budget of %s: rate %s -> %.3g/s, paused %.1fs (upstream answered %d)",
                self.service,
                f"{old / 1000:.3g}/s" if old else "unbounded",
                new / 1000,
                left / 1000,
                status,
            )
            self._note_rate(new / 1000, self.processes, logged=True)
        elif self.phase != LEARNT:
            self.phase = LEARNT  # another process's 429 ended the slow start
        return left / 1000

    def paused(self, exc: errors.RateLimited) -> errors.Throttled:
        """What a call whose retries met only 429s becomes: held back until the fleet's
        pause is over, so the job is put off without a retry or a failure record."""
        wait = max(self.busy_until - self._clock(), exc.retry_after or DEFAULT_PAUSE, 0.1)
        return errors.Throttled(
            f"upstream paused the fleet ({exc.status}): next call in {wait:.1f}s",
            self.service,
            exc.method,
            exc.path,
            exc.status,
            "",
            wait,
        )

    def _note_rate(
        self, rate: float, processes: int, *, phase: str = LEARNT, logged: bool = False
    ) -> None:
        self.processes = max(1, processes)
        if phase != self.phase and self.policy.rate <= 0:
            if phase == SLOW and not self.phase:
                log.info("budget of %s: no rate known, slow start at %.3g/s", self.service, rate)
            elif phase == OPEN and self.phase == SLOW and not self._opened:
                # Once per process: its threads' replies cross the change in any order.
                self._opened = True
                log.info(
                    "budget of %s: slow start met no limit up to %.3g/s: unbounded",
                    self.service,
                    self.rate,
                )
        previous_phase, self.phase = self.phase, phase
        if abs(rate - self.rate) < 1e-9:
            return
        previous, self.rate = self.rate, rate
        BUDGET_RATE.labels(self.service).set(rate)
        # Growth is logged when it crosses a whole request/s (in slow start: when it
        # doubles), so a recovery is a few lines, not one per call.
        # In slow start only a doubling is logged: processes' readings cross a power
        # of two in both directions while they interleave.
        if phase == SLOW:
            changed = _log2_step(rate) > _log2_step(previous)
        else:
            changed = math.floor(rate) != math.floor(previous)
        if not logged and previous_phase and changed:
            log.info("budget of %s: rate %.3g/s -> %.3g/s", self.service, previous, rate)


def _log2_step(rate: float) -> int:
    return math.floor(math.log2(rate)) if rate > 0 else -1
