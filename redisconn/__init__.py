"""How the service reaches Redis: settings, one connection factory, Celery's view of both.

Every user of Redis (the results store, the circuit breakers and rate limits, beat, the
broker and result backend, the operator CLI) gets its connection here, so a Sentinel
failover, TLS or an ACL user is configured once and honoured everywhere.
"""

from redisconn.factory import Topology, client, sentinel_for, topology
from redisconn.settings import RedisSettings, RedisTarget, TlsFiles

__all__ = [
    "RedisSettings",
    "RedisTarget",
    "TlsFiles",
    "Topology",
    "client",
    "sentinel_for",
    "topology",
]
