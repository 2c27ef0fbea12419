"""A hostile upstream through real jobs at the default retries: each trick, its typed record.

A permanent trick (a redirect, a body over the cap, HTML, the wrong shape) costs one call;
a transient one (a slow drip stopped at the deadline, a truncated body) costs the
documented worst case, 4 client attempts x 4 executions = 16 calls, then a record.
"""

from __future__ import annotations

from typing import Any

import pytest

from apis.config import DEFAULT_MAX_RESPONSE_BYTES, ApiSettings
from settings import WorkerSettings
from tests.chaos.conftest import FETCH
from tests.support.celery_worker import wait_for

ATTEMPTS = ApiSettings.model_fields["http_retry_attempts"].default
MAX_RETRIES = WorkerSettings.model_fields["task_max_retries"].default
WORST_CASE_CALLS = ATTEMPTS * (MAX_RETRIES + 1)
# (fault kind, parameters, the error its job must be recorded with, calls it may cost)
CASES = (
    ("redirect", {"location": "http://example.invalid/elsewhere"}, "UnexpectedRedirect", 1),
    ("huge", {"size": 2 * DEFAULT_MAX_RESPONSE_BYTES}, "ResponseTooLarge", 1),
    ("slow_drip", {"interval": 0.05}, "UpstreamTimeout", WORST_CASE_CALLS),
    ("wrong_content_type", {}, "InvalidResponse", 1),
    ("wrong_shape", {"shape": "list"}, "InvalidResponse", 1),
    ("truncated", {}, "UpstreamConnectionError", WORST_CASE_CALLS),
    # A protocol violation is permanent: one call, not the transient worst case.
    ("header_flood", {}, "ProtocolViolation", 1),
    ("deep_json", {}, "InvalidResponse", 1),
    ("encoding", {"encodings": "br"}, "InvalidResponse", 1),
)


# The upstream's tricks end in the API layer: the same whichever broker delivered the
# job (retries through RabbitMQ's delayed delivery: test_circuit_breaker, test_dead_holder).
@pytest.mark.broker("redis")
def test_each_hostile_answer_ends_in_its_typed_record_after_one_call_or_the_worst_case(
    deploy, sandbox: Any
) -> None:
    """Redirect not followed, huge body cut off, slow drip stopped at the deadline, a
    header flood refused after one call, etc."""
    assert WORST_CASE_CALLS == 16  # the figure docs/reliability.md gives
    deployment = deploy(
        # The slow drip runs to the body's deadline (connect + 2 x read) on each of its
        # 16 attempts: 1.1 s each rather than 23 s. The drip (a byte every 0.05 s) stays
        # well inside each read timeout, even on a loaded machine that stalls the
        # upstream's thread for a few tenths of a second, so only the deadline can stop it.
        HTTP_CONNECT_TIMEOUT="0.1",
        HTTP_READ_TIMEOUT="0.5",
    )
    deployment.start_worker(concurrency=2)
    for index, (kind, params, error, calls) in enumerate(CASES, start=1):
        sandbox.reset()
        sandbox.inject("pokemon", kind, times=None, **params)
        job = deployment.producer.send_task(FETCH, args=["pikachu"])
        wait_for(lambda n=index: len(deployment.failures()) == n, timeout=60, what=kind)
        record = deployment.failures()[-1]
        assert (record["error"], record["task_id"]) == (error, job.id), kind
        assert record["attempts"] == ("1" if calls == 1 else str(MAX_RETRIES + 1)), kind
        assert job.state == "FAILURE"
        assert sandbox.calls("pokemon") == calls, kind
    assert deployment.results.keys("pokemon:*") == []
    drip = deployment.failures()[2]
    assert "answer not complete after" in drip["message"]
    errors = [record["error"] for record in deployment.failures()]
    print(
        f"hostile upstream: sent={len(CASES)} completed=0 recorded={len(errors)} lost=0 "
        f"calls per case={[calls for *_, calls in CASES]} errors={errors}"
    )
