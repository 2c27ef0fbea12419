"""The broker is chosen once, in `brokers/`: no other product module looks at a broker or
result backend URL's scheme, and the settings accept exactly the schemes `brokers/` does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import brokers
from settings.worker import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
#: Product packages above `brokers` in the layers, which may ask `brokers` but not look.
#: `redisconn` sits below `brokers` and reads only Redis URLs (REDIS_URL, its TLS and
#: Sentinel forms); it is checked for RabbitMQ schemes only.
PACKAGES = ("apis", "settings", "telemetry", "upstreams", "results", "tasks", "worker", "ops")
BROKER_SCHEMES = r"(?:amqps?|pyamqp|rediss?|sentinel|unix)"
SCHEME_CHECKS = (
    # url.startswith("amqp"), url.lower().startswith("redis")
    re.compile(rf"""startswith\(\s*["']{BROKER_SCHEMES}"""),
    # url.split("://", 1)[0], url.partition("://")[0]
    re.compile(r"""(?:split|partition)\(\s*["']://"""),
    # urlsplit(url).scheme == "rediss", parts.scheme in ("redis", ...)
    re.compile(rf"""\.scheme\b[^\n]*["']{BROKER_SCHEMES}["']"""),
    # scheme in ("redis", "rediss", "unix")
    re.compile(rf"""\bin\s*[(\[{{]\s*["']{BROKER_SCHEMES}["']\s*,"""),
)
RABBITMQ_SCHEME = re.compile(r"""["'](?:amqps?|pyamqp)(?:://)?["']""")


def scheme_checks(text: str) -> list[str]:
    """The lines of `text` that look at a broker URL's scheme."""
    return [
        line.strip() for line in text.splitlines() if any(p.search(line) for p in SCHEME_CHECKS)
    ]


def test_no_broker_url_scheme_check_outside_brokers() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {line}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in scheme_checks(path.read_text())
    ]
    found += [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "redisconn").rglob("*.py"))
        for line in path.read_text().splitlines()
        if RABBITMQ_SCHEME.search(line)
    ]
    assert found == []


@pytest.mark.parametrize(
    "line",
    [
        'if broker_url.startswith("amqp"):',
        'scheme = self.celery_broker_url.split("://", 1)[0].lower()',
        'if url and url.partition("://")[0] in ("redis", "rediss"):',
        'if urlsplit(url).scheme == "sentinel":',
        'if scheme not in ("redis", "rediss", "unix"):',
    ],
)
def test_the_grep_finds_each_form_of_scheme_check(line: str) -> None:
    assert scheme_checks(line) == [line]


@pytest.mark.parametrize(
    "url", ["redis://h/0", "rediss://h/0", "sentinel://h:26379", "amqp://h//", "amqps://h//"]
)
def test_the_settings_accept_the_schemes_brokers_accepts(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    assert WorkerSettings().broker_url.split(";")[0] == url
    assert brokers.broker_kind(url) == brokers.broker_module(url).KIND


@pytest.mark.parametrize("url", ["unix:///run/redis.sock", "kafka://h:9092"])
def test_the_settings_refuse_the_schemes_brokers_refuses(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`unix://` included: kombu has no such transport, so a worker could not start."""
    with pytest.raises(ValueError, match="unsupported scheme"):
        brokers.broker_module(url)
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    with pytest.raises(ValidationError, match="unsupported scheme"):
        WorkerSettings()


def test_the_result_backend_choice() -> None:
    """Celery keeps results in Redis for `redis://` and `rediss://` only; the worker's
    one-round-trip backend and the CLI's reachability check follow this one answer."""
    assert brokers.redis_result_backend("redis://h/0")
    assert brokers.redis_result_backend("rediss://h/0")
    assert not brokers.redis_result_backend("rpc://")
    assert not brokers.redis_result_backend(None)


def test_a_unix_socket_redis_url_names_redis_url_when_it_would_be_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REDIS_URL may be a unix:// socket for the results, but then the broker needs its
    own URL: the error says which variable to set, not a CELERY_BROKER_URL never given."""
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis.sock")
    with pytest.raises(ValidationError, match=r"REDIS_URL: .* set CELERY_BROKER_URL"):
        WorkerSettings()
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://h/0")
    assert WorkerSettings().broker_url == "redis://h/0"
