"""A rate limit per upstream shared by every worker process: a token bucket in Redis.

Why shared: an upstream's limit (or its fair-use request) applies to all of our traffic
together, and the number of workers and threads changes with the deployment. A limit
per process would allow `processes x limit`.

One Lua script refills the bucket by the time elapsed since its last use (Redis's own
clock, so hosts with skewed clocks agree), then takes a token. When none is left it
reserves the next one instead: the bucket goes below zero and the caller is told how
long to wait, so concurrent callers queue up at `1 / rate` intervals without polling.
A wait longer than `max_wait` is not reserved: the call is held back with `Throttled`,
and the task layer defers the job instead of holding a worker slot. If Redis cannot be
reached the call goes through unlimited (fails open), like the circuit breaker.

Every HTTP attempt takes a token, retries included, since each one reaches the upstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from apis import errors
from apis.breaker import StateGuard, shared_redis
from apis.config import UpstreamConfig
from telemetry import tracing
from telemetry.metrics import RATE_LIMIT_DEFERRALS, RATE_LIMIT_WAITS

log = logging.getLogger("apis.ratelimit")


# KEYS: bucket. ARGV: rate per second, capacity, max wait ms.
# Returns 0 (go now), a positive wait in ms (token reserved), or minus the wait in ms
# when it would exceed the bound (nothing reserved).
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
    tokens = capacity
    at = now
end
if now > at then
    tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
    at = now
end
local wait = 0
if tokens < 1 then
    wait = math.ceil((1 - tokens) * 1000 / rate)
    if wait > max_wait then
        return -wait
    end
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) * 1000 / rate) + 1000)
return wait
"""


class RateLimiter:
    """The shared bucket of one upstream; a no-op when its rate is 0 or no Redis is set."""

    def __init__(
        self,
        config: UpstreamConfig,
        client: redis.Redis | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        policy = config.rate_limit
        self.service = config.service
        self.policy = policy
        if client is None and config.state_redis and policy.rate > 0:
            client = shared_redis(config.state_redis)
        self.enabled = client is not None and policy.rate > 0
        self.key = f"{config.state_key_prefix}ratelimit:{config.service}"
        self._sleep = sleep
        self._guard = StateGuard(f"rate limit bucket of {config.service}")
        if client is not None:
            self._take = client.register_script(_TAKE)

    def acquire(self, method: str = "", path: str = "") -> float:
        """Wait for a token (returns the seconds waited) or raise `Throttled`."""
        if not self.enabled:
            return 0.0
        policy = self.policy
        args: list[str | int] = [repr(policy.rate), policy.capacity, int(policy.max_wait * 1000)]
        wait_ms = int(self._guard.run(lambda: self._take(keys=[self.key], args=args), 0))
        if wait_ms < 0:
            RATE_LIMIT_DEFERRALS.labels(self.service).inc()
            raise errors.Throttled(
                f"rate limit of {policy.rate:g}/s: next token in {-wait_ms / 1000:.1f}s, "
                f"beyond the {policy.max_wait:g}s wait bound",
                self.service,
                method,
                path,
                None,
                "",
                -wait_ms / 1000,
            )
        if wait_ms > 0:
            RATE_LIMIT_WAITS.labels(self.service).inc()
            tracing.add_event(
                tracing.RATE_LIMIT_WAIT,
                {"apiworker.upstream": self.service, "apiworker.wait_s": wait_ms / 1000},
            )
            self._sleep(wait_ms / 1000)
        return wait_ms / 1000
