"""The one settings tree: a root with a section per concern, validated at start.

Each section is owned by the room that uses it and reads its own upper-case environment
variables (their names never change): `redis` (redisconn/settings.py: where Redis is,
Sentinel, TLS, the key prefix), `api` (apis/config.py: upstreams, timeouts, retries,
circuits, rate limits) and `worker` (settings/worker.py: jobs, broker, beat, logs,
metrics). The Redis variables are read once, by the `redis` section: the other two take
their Redis fields from it (`redisconn.settings.RedisSection`). The root checks what
spans sections. Each upstream declares its own variables
in a model its registry entry names (`Upstream.settings`), to which the registry adds
its budget variables (`apis.config.upstream_settings_model`), checked at start with the
rest. Below the tasks and the worker (which read it) and above the rooms whose sections
it composes.

`get_settings()` is the one accessor: the tree the process checked at start
(`checked_settings`), else read on first use, then kept, so reading a setting on a job's
path costs an attribute lookup.
"""

from __future__ import annotations

import threading

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from apis import reset_clients
from apis.config import ApiSettings, upstream_settings_model, use_settings
from apis.config import get_settings as get_api_settings
from redisconn.settings import RedisSettings, get_redis_settings, use_redis_settings
from settings.errors import ConfigurationError, lines_of, merged
from settings.worker import WorkerSettings
from upstreams import Upstream, all_upstreams

__all__ = [
    "SECTIONS",
    "ConfigurationError",
    "Settings",
    "WorkerSettings",
    "checked_settings",
    "get_settings",
    "reset_settings",
    "setting_models",
    "setting_names",
    "upstream_sections",
]


class Settings(BaseModel):
    """The root: one section per concern."""

    model_config = ConfigDict(frozen=True)

    # Read in this order: a value two sections read (WORKER_CONCURRENCY also sizes the
    # HTTP pools) is reported by the worker's section first. The API layer's is the one
    # its clients are configured from (`apis.config.get_settings`).
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    api: ApiSettings = Field(default_factory=get_api_settings)
    redis: RedisSettings = Field(default_factory=get_redis_settings)

    def upstream(self, entry: Upstream) -> BaseModel | None:
        """The upstream's own settings (the model its entry names), read once."""
        return self.api.upstream_settings(entry)

    @model_validator(mode="after")
    def _jobs_outlast_their_calls(self) -> Settings:
        """A job's soft time limit must exceed the longest upstream call, or jobs die
        mid-retry."""
        longest = self.api.worst_case_call_seconds
        if self.worker.task_soft_time_limit <= longest:
            raise ValueError(
                f"TASK_SOFT_TIME_LIMIT ({self.worker.task_soft_time_limit:g}s) must exceed "
                f"the longest upstream call ({longest:g}s: HTTP_RETRY_MAX_SECONDS + "
                "HTTP_CONNECT_TIMEOUT + 2 x HTTP_READ_TIMEOUT, or an upstream's own timeouts "
                "where its registry entry sets them), or jobs die mid-retry"
            )
        return self


#: Each section's model by its name in the tree.
SECTIONS: dict[str, type[RedisSettings]] = {
    "worker": WorkerSettings,
    "api": ApiSettings,
    "redis": RedisSettings,
}


def upstream_sections() -> dict[str, type[BaseModel]]:
    """The settings model of every upstream (its `Upstream.settings` and its budget
    variables), by the upstream's name: their variables are checked at start like the
    sections' own."""
    found: dict[str, type[BaseModel]] = {}
    for upstream in all_upstreams():
        model = upstream_settings_model(upstream)
        if model is not None:
            found[upstream.name] = model
    return found


_lock = threading.Lock()
_current: list[Settings] = []


def get_settings() -> Settings:
    """The process's settings tree: the one `checked_settings` installed, else read and
    validated on first use; kept afterwards."""
    if not _current:
        with _lock:
            if not _current:
                _current.append(Settings())
    return _current[0]


def reset_settings() -> None:
    """Forget the kept tree and the clients configured from it (the environment changed:
    tests); the next `get_settings()` reads it again."""
    with _lock:
        _current.clear()
    reset_clients()


def checked_settings() -> Settings:
    """The whole tree read afresh from the environment, and from now on the process's
    (`get_settings`), or a `ConfigurationError` with one line per bad variable of every
    section (not only the first section's)."""
    built: dict[type[BaseModel], BaseModel] = {}
    failed: list[list[str]] = []
    # The sections, then the upstreams' models (by the upstream's name).
    own = upstream_sections()
    sections = [*SECTIONS.values(), *own.values()]
    # The Redis variables are read once, by the first section that needs them; the
    # worker's and the API layer's sections take theirs from that object.
    use_redis_settings(None)
    for cls in sections:
        try:
            built[cls] = get_redis_settings() if cls is RedisSettings else cls()
        except ValidationError as exc:
            failed.append(lines_of(cls, exc))
    if failed:
        raise ConfigurationError(merged(failed))
    try:
        tree = Settings.model_validate({name: built[cls] for name, cls in SECTIONS.items()})
    except ValidationError as exc:
        raise ConfigurationError(lines_of(Settings, exc)) from None
    for name, cls in own.items():  # read once: the API layer keeps the upstreams' settings
        tree.api.keep_upstream_settings(name, built[cls])
    with _lock:
        reset_clients()
        use_redis_settings(tree.redis)
        use_settings(tree.api)
        _current[:] = [tree]
    return tree


def setting_models() -> tuple[type[BaseModel], ...]:
    """The model of every section and of every upstream's own settings."""
    return (*SECTIONS.values(), *upstream_sections().values())


def setting_names() -> frozenset[str]:
    """Every environment name the service reads: every field of every section and of
    every upstream's settings (its budget variables among them).

    Derived, not listed, so the README check and everything that must start from
    defaults (the test suite, the benchmarks) see a new setting without being told.
    """
    return frozenset(name.upper() for cls in setting_models() for name in cls.model_fields)
