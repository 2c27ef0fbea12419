"""Celery's Redis result backend, storing a job's result in one round trip instead of two.

Celery stores each result with a GET of the current state (so that a late duplicate of
a job can never overwrite a SUCCESS already there) and then a MULTI with SETEX and
PUBLISH (the value for readers, the message for callers waiting in `AsyncResult.get()`).
That is two round trips per job on the worker's busiest path. Here one Lua script does
the same three steps atomically: read the current meta, keep it when it says SUCCESS,
otherwise SET it with the same expiry and PUBLISH it on the same channel. The key, the
value (Celery's own encoded meta), the expiry and the channel are exactly Celery's, so
every reader (AsyncResult, the CLI's `--wait`, another service) sees no difference.

Only the JSON serializer is handled in the script (the only one the app accepts); with
any other, or for groups and chords, Celery's own code runs unchanged.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError

from brokers import redis_result_backend

# KEYS[1] the result key; ARGV[1] the encoded meta, ARGV[2] its expiry in seconds (0: none).
_STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local expires = tonumber(ARGV[2])
if expires and expires > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class OneRoundTripRedisBackend(RedisBackend):  # type: ignore[misc]
    """`redis://` and `rediss://` result backend; see the module docstring."""

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        # Installed as the app's backend class, Celery passes no URL: take the setting's.
        super().__init__(app=app, url=url or app.conf.result_backend, **kwargs)
        self._store_script: Any = None

    def _store_result(
        self,
        task_id: str | bytes,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if self.serializer != "json":
            return super()._store_result(
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(self._store_unless_succeeded, (self.get_key_for_task(task_id), value, expires))
        return result

    def _store_unless_succeeded(self, key: str, value: Any, expires: int | None) -> Any:
        if self._store_script is None:
            self._store_script = self.client.register_script(_STORE_UNLESS_SUCCEEDED)
        return self._store_script(keys=[key], args=[value, int(expires or 0)])


def backend_class(url: str | None) -> type[RedisBackend] | None:
    """The backend class for the app's result backend URL; None leaves Celery's choice."""
    if redis_result_backend(url):
        return OneRoundTripRedisBackend
    return None
