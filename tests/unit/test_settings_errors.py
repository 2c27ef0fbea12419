"""Bad settings become one line per variable, named as the user set it."""

from __future__ import annotations

import pytest

from settings import ConfigurationError, checked_settings


def lines_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        checked_settings()
    return caught.value.lines


def test_a_variable_two_sections_read_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORKER_CONCURRENCY also sizes the HTTP pool: one line, under the name the user set."""
    monkeypatch.delenv("HTTP_POOL_SIZE", raising=False)
    assert lines_for(monkeypatch, WORKER_CONCURRENCY="0") == [
        "WORKER_CONCURRENCY='0': must be at least 1"
    ]


def test_each_section_reports_its_own_bad_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad worker setting does not hide a bad API-layer one."""
    assert lines_for(monkeypatch, WORKER_POOL="fibers", HTTP_RETRY_ATTEMPTS="99") == [
        "WORKER_POOL='fibers': must be one of 'threads', 'prefork', 'solo', 'gevent' or 'eventlet'",
        "HTTP_RETRY_ATTEMPTS='99': must be at most 10",
    ]


def test_a_password_in_a_url_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected URL is shown without its password."""
    (line,) = lines_for(monkeypatch, CELERY_BROKER_URL="kafka://me:s3cret-pw@broker:9092")
    assert line.startswith("CELERY_BROKER_URL='kafka://me:***@broker:9092': unsupported scheme")
    assert "s3cret-pw" not in line


def test_the_http_pool_follows_the_worker_concurrency_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One connection kept per concurrent job, with neither variable set as with both:
    a smaller pool opens and closes a connection for every call above it."""
    monkeypatch.delenv("HTTP_POOL_SIZE", raising=False)
    monkeypatch.delenv("WORKER_CONCURRENCY", raising=False)
    tree = checked_settings()
    assert tree.api.http_pool_size == tree.worker.worker_concurrency
    monkeypatch.setenv("WORKER_CONCURRENCY", "8")
    tree = checked_settings()
    assert tree.api.http_pool_size == tree.worker.worker_concurrency == 8
