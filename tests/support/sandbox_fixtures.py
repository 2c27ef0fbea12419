"""Pytest fixtures for the sandbox upstream.

One server is started per test session (startup and warm caches are shared); each test
gets it back clean, with no faults, no recorded requests and no added latency.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.server import SandboxServer


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """The session's sandbox upstream, started once."""
    server = SandboxServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The session's sandbox upstream, reset before and after the test."""
    _clean(sandbox_server)
    try:
        yield sandbox_server
    finally:
        _clean(sandbox_server)


def _clean(server: SandboxServer) -> None:
    server.reset()
    server.latency = 0.0
