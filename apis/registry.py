"""One client instance per upstream per process, built from the settings on first use;
the client classes of the upstream registry (`upstreams`)."""

from __future__ import annotations

import importlib
import threading
from typing import TypeVar

from apis.client import ApiClient
from apis.config import get_settings, use_settings
from redisconn.settings import use_redis_settings
from upstreams import Upstream, all_upstreams

C = TypeVar("C", bound=ApiClient)

_lock = threading.Lock()
_clients: dict[type[ApiClient], ApiClient] = {}


def get_client(cls: type[C]) -> C:
    """The shared client of upstream `cls`; its session is per process (see ApiClient)."""
    client = _clients.get(cls)
    if client is None:
        with _lock:
            client = _clients.get(cls)
            if client is None:
                client = cls(cls.configure(get_settings()))
                _clients[cls] = client
    assert isinstance(client, cls)
    return client


def reset_clients() -> None:
    """Forget every client and the cached settings (tests change the environment)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
        use_settings(None)
        use_redis_settings(None)


def client_class(upstream: Upstream) -> type[ApiClient]:
    """The client class an upstream entry names (`module:Class`)."""
    cls = getattr(importlib.import_module(upstream.client_module), upstream.client_class)
    if not (isinstance(cls, type) and issubclass(cls, ApiClient)):
        raise TypeError(f"{upstream.client} is not an ApiClient")
    return cls


def client_classes() -> tuple[type[ApiClient], ...]:
    """The client class of every registered upstream, in the registry's order."""
    return tuple(client_class(upstream) for upstream in all_upstreams())
