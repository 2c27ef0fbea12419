"""Malformed broker items become refused messages; everything kombu stores passes through.

The transport's work against a real Redis: tests/integration/test_transport_redis.py.
"""

from __future__ import annotations

import json

import pytest

from brokers.redis_transport import REFUSED_CONTENT_TYPE, envelope_or_refused

ENVELOPE = {"body": "W10=", "headers": {}, "properties": {"body_encoding": "base64"}}


def test_a_well_formed_envelope_passes_unchanged() -> None:
    """Ordinary jobs are untouched."""
    assert envelope_or_refused(json.dumps(ENVELOPE)) == ENVELOPE


def test_a_list_shaped_like_kombus_old_unacked_record_is_refused() -> None:
    """The queues hold envelopes only: a `[message, exchange, routing_key]` list is not
    one, whoever wrote it."""
    record = [ENVELOPE, "celery", "celery"]
    assert envelope_or_refused(json.dumps(record))["content-type"] == REFUSED_CONTENT_TYPE


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2, 3]",
        '{"hello": "world"}',
        json.dumps({"body": "%%%", "properties": {"body_encoding": "base64"}}),
        b"\xff\xfe",
    ],
)
def test_malformed_items_become_a_refused_content_type(raw: str | bytes) -> None:
    """The worker refuses and logs them like a pickle message, instead of dying."""
    message = envelope_or_refused(raw)
    assert message["content-type"] == REFUSED_CONTENT_TYPE
    assert message["properties"]["body_encoding"] == "base64"
