"""A hostile upstream through real jobs: every trick ends as a typed failure record."""

from __future__ import annotations

import time
from typing import Any

from tests.chaos.conftest import FETCH
from tests.support.celery_worker import wait_for

READ_TIMEOUT = CONNECT_TIMEOUT = 0.5
TOTAL_DEADLINE = CONNECT_TIMEOUT + 2 * READ_TIMEOUT
# (fault kind, parameters, the error its job must be recorded with)
CASES = (
    ("redirect", {"location": "http://example.invalid/elsewhere"}, "UnexpectedRedirect"),
    ("huge", {"size": 20 * 1024 * 1024}, "ResponseTooLarge"),
    ("slow_drip", {"interval": 0.05}, "UpstreamTimeout"),
    ("wrong_content_type", {}, "InvalidResponse"),
    ("wrong_shape", {"shape": "list"}, "InvalidResponse"),
    ("truncated", {}, "UpstreamConnectionError"),
)


def test_each_hostile_answer_is_one_call_and_one_typed_record(deploy, sandbox: Any) -> None:
    """Redirect not followed, huge body cut off, slow drip stopped at the deadline, etc."""
    deployment = deploy(
        HTTP_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        HTTP_READ_TIMEOUT=str(READ_TIMEOUT),
        HTTP_MAX_RESPONSE_BYTES=str(1024 * 1024),
        HTTP_RETRY_ATTEMPTS="1",
        TASK_MAX_RETRIES="0",
    )
    deployment.start_worker(concurrency=2)
    for index, (kind, params, error) in enumerate(CASES, start=1):
        sandbox.inject("pokemon", kind, **params)
        started = time.monotonic()
        job = deployment.producer.send_task(FETCH, args=["pikachu"])
        wait_for(lambda n=index: len(deployment.failures()) == n, timeout=15, what=kind)
        record = deployment.failures()[-1]
        assert (record["error"], record["task_id"]) == (error, job.id), kind
        assert job.state == "FAILURE"
        assert sandbox.calls("pokemon") == index
        assert time.monotonic() - started < TOTAL_DEADLINE + 3
    assert deployment.results.keys("pokemon:*") == []
    drip = deployment.failures()[2]
    assert "body not complete" in drip["message"]
    errors = [record["error"] for record in deployment.failures()]
    print(
        f"hostile upstream: sent={len(CASES)} completed=0 recorded={len(errors)} lost=0 "
        f"calls={sandbox.calls('pokemon')} errors={errors}"
    )
