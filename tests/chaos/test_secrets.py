"""A real-looking API token appears nowhere: not in logs, results, failures or the backend.

The broker is scanned while the jobs run (queued, taken, waiting for a retry), not only
after the queues drained, and every message body is decoded from base64 before the
search: a token inside a body would not show in the raw queue item.
"""

from __future__ import annotations

import base64
import binascii
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from sandbox import KINDS
from tests.chaos.conftest import Deployment
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.otlp_collector import OtlpCollector

TOKEN = "smp_live_Xk29Qv7RtA3mLw8ZpN4cJ6yHbD1fGsEu"  # a fake, real-looking token
SYNC_ALL = "tasks.semaphore.sync_all_projects"
SYNC_PIPELINES = "tasks.semaphore.sync_pipelines"


@pytest.mark.broker("redis")  # reads every key of the Redis broker
def test_the_token_never_leaves_the_request_header(deploy, sandbox: Any) -> None:
    """401s, 5xx, a redirect echoing the token, DEBUG logs: the token is nowhere."""
    accepted = sandbox.semaphore_token
    sandbox.semaphore_token = TOKEN
    try:
        deployment = deploy(
            SEMAPHORE_API_TOKEN=TOKEN,
            # Every log line a worker can write, debug included, is searched.
            LOG_LEVEL="DEBUG",
            # Retries wait as long as in production (not the suite's 0.05 s), so the
            # scan below can see them waiting in the broker.
            TASK_RETRY_BACKOFF="2",
        )
        # Jobs queued before any worker runs: the scan must find them, decoded.
        project = first_project_id(sandbox)
        queued = [
            deployment.producer.send_task(SYNC_ALL),
            deployment.producer.send_task(SYNC_PIPELINES, args=[project]),
        ]
        with BrokerScan(deployment) as scan:
            wait_for(
                lambda: any(project in body for body in scan.bodies),
                timeout=10,
                what="the queued jobs found by the scan, their bodies decoded",
            )
            worker = deployment.start_worker(concurrency=4, TEST_WORKER_LOGLEVEL="DEBUG")
            for job in queued:
                job.get(timeout=30)
            run_jobs(deployment, sandbox)
    finally:
        sandbox.semaphore_token = accepted
    wait_for(deployment.drained, timeout=20, what="every job finished")

    redirect = [r for r in deployment.failures() if r["error"] == "UnexpectedRedirect"]
    # The Location was read: its host is named, its userinfo (the token) never.
    assert "redirect to evil.example not followed" in redirect[0]["message"]
    places = {"worker log": worker.log()}
    for name, client in (
        ("results", deployment.results),
        ("broker", deployment.broker),
        ("result backend", deployment.backend),
    ):
        for key, value in dump(client):
            places[f"{name} {key!r}"] = value
    assert len(places) > 10
    # Not vacuous: the scan saw messages in the broker, bodies decoded, before and while
    # the worker ran (the first two jobs were found queued, their argument decoded).
    assert len(scan.bodies) >= 2
    places.update({f"broker item while running #{n}": t for n, t in enumerate(scan.items)})
    places.update({f"broker body while running #{n}": t for n, t in enumerate(scan.bodies)})
    print(
        f"secrets: records={len(deployment.failures())} places searched={len(places)} "
        f"log bytes={len(places['worker log'])} broker scans={scan.rounds} "
        f"distinct message bodies decoded={len(scan.bodies)} "
        f"retries seen waiting={scan.retries_seen}"
    )
    leaks = [place for place, text in places.items() if TOKEN in text]
    assert leaks == []


def run_jobs(deployment: Deployment, sandbox: Any) -> None:
    producer = deployment.producer
    assert producer.send_task(SYNC_ALL).get(timeout=30) == {"projects": 3}
    project = json.loads(deployment.results.get("semaphore-projects:all"))[0]["id"]
    failing = [
        ("projects", "unauthorized", {}, SYNC_ALL, ()),
        ("pipelines", "status", {"status": 500}, SYNC_PIPELINES, (project,)),
        ("pipelines", "status", {"status": 503, "times": 3}, SYNC_PIPELINES, (project,)),
        (
            "projects",
            "redirect",
            {"location": f"https://{TOKEN}@evil.example/steal?token={TOKEN}"},
            SYNC_ALL,
            (),
        ),
    ]
    # 503 on every client attempt of a first execution: the job waits in the broker for a
    # task retry, then succeeds.
    failing.append(("pipelines", "status", {"status": 503, "times": 4}, SYNC_PIPELINES, (project,)))
    for route, kind, params, task, args in failing:
        sandbox.inject(route, kind, **params)
        producer.send_task(task, args=list(args)).get(timeout=30, propagate=False)
        sandbox.clear_faults()
    sandbox.semaphore_token = "a-token-we-were-not-given"  # every call now answers 401
    producer.send_task(SYNC_ALL).get(timeout=30, propagate=False)
    # The record is written after the result is stored: wait for it, do not race it.
    wait_for(lambda: len(deployment.failures()) >= 4, timeout=10, what="four failure records")


def dump(client: redis.Redis) -> Iterator[tuple[bytes, str]]:
    """Every key of one database with its whole value as text, whatever its type."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        yield key, repr(value) + repr(key)


class BrokerScan:
    """Reads every key of the broker database in a loop while jobs run, decoding bodies."""

    def __init__(self, deployment: Deployment) -> None:
        self.client = redis.Redis.from_url(deployment.env["CELERY_BROKER_URL"])
        self.items: set[str] = set()  # raw values, as stored
        self.bodies: set[str] = set()  # message bodies, decoded from base64
        self.retries_seen = 0  # distinct retry messages caught waiting
        self.rounds = 0
        self._retries: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BrokerScan:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.rounds += 1
            for key, raw in raw_items(self.client):
                text = raw.decode("utf-8", "replace")
                self.items.add(f"{key!r} {text}")
                for envelope, body in decoded_bodies(text):
                    self.bodies.add(body)
                    headers = envelope.get("headers") or {}
                    if headers.get("retries"):
                        self._retries.add(f"{headers.get('id')}/{headers['retries']}")
            self.retries_seen = len(self._retries)


def raw_items(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every stored element of one database as bytes: strings, list items, hash values."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            items = [client.get(key) or b""]
        elif kind == "list":
            items = client.lrange(key, 0, -1)
        elif kind == "hash":
            items = list(client.hgetall(key).values())
        elif kind in ("set", "zset"):
            items = list(client.smembers(key) if kind == "set" else client.zrange(key, 0, -1))
        else:
            items = []
        for item in items:
            yield key, item


def decoded_bodies(text: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The base64 `body` of a kombu message envelope (a queue item, or an unacked record
    `[envelope, exchange, routing_key]`), decoded."""
    try:
        value = json.loads(text)
    except ValueError:
        return
    envelopes = value if isinstance(value, list) else [value]
    for envelope in envelopes:
        if isinstance(envelope, dict) and isinstance(envelope.get("body"), str):
            try:
                body = base64.b64decode(envelope["body"], validate=True)
            except (binascii.Error, ValueError):
                body = envelope["body"].encode()
            yield envelope, body.decode("utf-8", "replace")


def first_project_id(sandbox: Any) -> str:
    """The sandbox's first Semaphore project, read as a client would."""
    response = requests.get(
        f"{sandbox.semaphore_url}/projects",
        headers={"Authorization": f"Token {sandbox.semaphore_token}"},
        timeout=5,
    )
    return str(response.json()[0]["metadata"]["id"])


def hostile_faults(token: str) -> list[tuple[str, dict[str, Any]]]:
    """Every sandbox fault once, those that can carry the token carrying it."""
    carrying: dict[str, dict[str, Any]] = {
        "redirect": {"location": f"https://{token}@evil.example/steal?token={token}"},
        "next_link": {"link": f"http://{token}@evil.example/x?token={token}"},
        "slow_headers": {"interval": 0.3},
        "slow_chunks": {"interval": 0.3},
        "slow_drip": {"interval": 0.05, "encodings": "gzip, gzip"},
        "trailer_flood": {"seconds": 5},
        "hang": {"seconds": 3},
        "latency": {"seconds": 0.2},
        "encoding": {"encodings": "br"},
    }
    return [(kind, carrying.get(kind, {})) for kind in KINDS]


@pytest.mark.broker("redis")  # reads every key of the Redis broker
def test_no_hostile_answer_puts_the_token_in_any_channel(deploy, sandbox: Any) -> None:
    """Each sandbox fault on Semaphore, a unique token per run: nothing of it in the
    result backend (exc_message), the spans, the worker log, the failure records or
    `apiworker health`."""
    token = f"smp_live_{uuid.uuid4().hex}"
    accepted = sandbox.semaphore_token
    sandbox.semaphore_token = token
    try:
        with OtlpCollector() as collector:
            deployment = deploy(
                SEMAPHORE_API_TOKEN=token,
                LOG_LEVEL="DEBUG",
                # One attempt per execution, one execution per job: each fault is seen
                # once, within a short whole-exchange deadline (0.2 + 2 x 0.4 s).
                HTTP_CONNECT_TIMEOUT="0.2",
                HTTP_READ_TIMEOUT="0.4",
                HTTP_RETRY_ATTEMPTS="1",
                TASK_MAX_RETRIES="0",
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                OTEL_BSP_SCHEDULE_DELAY="50",
            )
            worker = deployment.start_worker(concurrency=4, TEST_WORKER_LOGLEVEL="DEBUG")
            faults = hostile_faults(token)
            for kind, params in faults:
                sandbox.inject("projects", kind, **params)
            jobs = [deployment.producer.send_task(SYNC_ALL) for _ in faults]
            for job in jobs:
                job.get(timeout=60, propagate=False)
            assert sandbox.pending_faults() == {}
            wait_for(deployment.drained, timeout=30, what="every job finished")
            sandbox.inject("projects", "next_link", link=f"http://{token}@evil.example/x")
            health = subprocess.run(
                [sys.executable, "-m", "ops.cli", "health", "--timeout", "5"],
                env=deployment.env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            wait_for(lambda: len(collector.spans()) > len(faults), timeout=20, what="spans")
            spans = collector.raw().decode("utf-8", "replace")
    finally:
        sandbox.semaphore_token = accepted

    records = deployment.failures()
    errors = sorted({record["error"] for record in records})
    # Not vacuous: the refused link and the masked redirect were recorded as such.
    assert {"InvalidResponse", "UnexpectedRedirect", "UpstreamTimeout"} <= set(errors)
    assert "semaphore" in health.stdout + health.stderr
    places = {
        "worker log": worker.log(),
        "failure records": repr(records),
        "spans": spans,
        "health": health.stdout + health.stderr,
    }
    for key, value in dump(deployment.backend):
        places[f"result backend {key!r}"] = value
    print(f"hostile secrets: faults={len(faults)} records={len(records)} errors={errors}")
    assert [place for place, text in places.items() if token in text] == []
