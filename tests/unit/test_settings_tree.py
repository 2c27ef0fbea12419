"""One settings tree, read once: one accessor, the Redis variables read by one section,
nothing read at import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from apis import get_settings as get_api_settings
from redisconn.settings import RedisSettings, get_redis_settings, use_redis_settings
from settings import WorkerSettings, checked_settings, get_settings, reset_settings
from upstreams import BUILT_IN

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("apis", "brokers", "redisconn", "settings", "results", "tasks", "telemetry", "upstreams",
           "worker", "ops")  # fmt: skip


def test_the_worker_and_api_sections_take_redis_from_the_one_redis_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the Redis section installed, the environment's REDIS_URL is not read again."""
    use_redis_settings(RedisSettings(redis_url="redis://10.0.0.1:6379/3", result_key_prefix="p:"))
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.2:6379/0")
    assert WorkerSettings().redis_url == "redis://10.0.0.1:6379/3"
    assert WorkerSettings().result_key_prefix == "p:"
    api = get_api_settings()
    assert api.redis_url == "redis://10.0.0.1:6379/3"
    # A keyword still overrides, as for any field.
    assert WorkerSettings(redis_url="redis://10.0.0.3:6379/0").redis_url.startswith(
        "redis://10.0.0.3"
    )


def test_the_checked_tree_is_the_one_every_accessor_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """checked_settings() installs what it read: the root, the API layer's section and the
    Redis section are those objects from then on."""
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.4:6379/0")
    tree = checked_settings()
    assert get_settings() is tree
    assert get_api_settings() is tree.api
    assert get_redis_settings() is tree.redis
    assert tree.worker.redis_url == tree.api.redis_url == tree.redis.redis_url
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:6379/0")
    assert get_settings().worker.redis_url == "redis://10.0.0.4:6379/0"  # kept, not re-read
    reset_settings()
    assert get_settings().worker.redis_url == "redis://10.0.0.5:6379/0"


def test_a_bad_redis_variable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three sections know REDIS_DB; a bad value is still reported once."""
    from settings import ConfigurationError

    monkeypatch.setenv("REDIS_DB", "99")
    with pytest.raises(ConfigurationError) as caught:
        checked_settings()
    assert [line for line in caught.value.lines if line.startswith("REDIS_DB")] == [
        "REDIS_DB='99': must be at most 15"
    ]


def test_nothing_reads_settings_at_import() -> None:
    """The task modules, the beat schedule and the CLI import with a bad TASK_MAX_RETRIES
    and base URL: a value is read when a job needs it, and checked by the worker at start."""
    code = "import tasks.base, tasks.pokemon, tasks.cms, tasks.semaphore, worker.beat, ops.cli"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "TASK_MAX_RETRIES": "many", "POKEAPI_BASE_URL": "x"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_one_accessor_reads_the_sections() -> None:
    """Outside settings/ and the sections' own accessors, no product module builds a
    section from the environment: it asks `settings.get_settings()`."""
    builds = re.compile(r"\b(WorkerSettings|ApiSettings|RedisSettings)\(\)")
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for room in PRODUCT
        for path in sorted((ROOT / room).rglob("*.py"))
        for line in path.read_text().splitlines()
        if builds.search(line)
    ]
    assert found == [
        "apis/config.py: _current[:] = [ApiSettings()]",
        "redisconn/settings.py: _current[:] = [RedisSettings()]",
    ]
    # Above the API layer and the tree itself, the sections come through the tree.
    section_accessor = re.compile(r"from apis(\.config)? import .*\bget_settings\b")
    above = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for room in ("results", "tasks", "worker", "ops")
        for path in sorted((ROOT / room).rglob("*.py"))
        for line in path.read_text().splitlines()
        if section_accessor.search(line)
    ]
    assert above == []


def test_an_upstreams_own_settings_are_those_checked_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model an entry names is read once, by the check at start, and kept."""
    entry = BUILT_IN[0]
    monkeypatch.setenv(entry.base_url_setting, "http://10.0.0.6/api/v2")
    tree = checked_settings()
    monkeypatch.setenv(entry.base_url_setting, "http://10.0.0.7/api/v2")
    assert get_settings().upstream(entry) is tree.upstream(entry)
    assert get_api_settings().base_url(entry) == "http://10.0.0.6/api/v2"
