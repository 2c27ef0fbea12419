"""README's "Adding an upstream", followed as written: a fourth upstream, no file of the
service edited.

The test writes out every code block of that section under the file name its first line
gives (`# weather_upstream/client.py`...), turns the block of `pyproject.toml` into the
installed package's entry points (a bare `.dist-info` on PYTHONPATH, as `pip install`
leaves it), starts the sandbox (`python -m sandbox`, serving the guide's route) and a
real worker with that package, and runs jobs through them: the result stored under its
documented key with its metadata and event, the CLI's `result` and `health` knowing the
new upstream, and a bad value of its settings stopping the worker at start with one line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import free_port
from upstreams import offline_settings

pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
TASK = "weather_upstream.tasks.fetch_forecast"


def guide_blocks() -> dict[str, str]:
    """Each code block of the guide, by the file name on its first line."""
    text = README.read_text()
    section = text[text.index("## Adding an upstream") : text.index("## The operator CLI")]
    blocks = re.findall(r"```(?:python|toml)\n# (\S+)\n(.*?)```", section, re.S)
    return {name: body for name, body in blocks}


@pytest.fixture(scope="module")
def weather_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's package, installed as pip would: its modules and its entry points."""
    root = tmp_path_factory.mktemp("weather")
    blocks = guide_blocks()
    project = tomllib.loads(blocks.pop("pyproject.toml"))["project"]
    for name, body in blocks.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    dist = root / f"weather_upstream-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    groups = project["entry-points"]
    (dist / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
            for group, points in groups.items()
        )
    )
    return root


@pytest.fixture(scope="module")
def weather_sandbox(weather_package: Path) -> Iterator[str]:
    """`python -m sandbox` with the package installed: the guide's route is served."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(weather_package), str(REPO_ROOT)])}
    server = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _connects(port), timeout=30, what="the sandbox")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=15)


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_guides_upstream_stores_a_result_with_its_event(
    own_redis: str, sandbox_server: object, weather_package: Path, weather_sandbox: str
) -> None:
    """A job of the new upstream, sent by name with the CLI, runs on its own queue
    through the sandbox route and is stored as the results contract says; `result`
    reads its kind, `health` probes it, `top` shows its queue and breaker, and the
    worker's /metrics count its calls and its queue."""
    metrics_port = free_port()
    env = worker_environment(
        own_redis,
        sandbox_server,
        WEATHER_BASE_URL=f"{weather_sandbox}/weather/v1",
        PYTHONPATH=os.pathsep.join([str(weather_package), str(REPO_ROOT)]),
        METRICS_PORT=str(metrics_port),
    )
    producer = producer_app(env["CELERY_BROKER_URL"], with_db(own_redis, 2))
    worker = WorkerProcess(env).start(producer)
    results = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    try:

        def apiworker(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "ops.cli", *args], env={**os.environ, **env},
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        sent = apiworker("enqueue", TASK, "oslo", "--wait")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1]) == {"city": "oslo", "celsius": 7.0}
        assert "queue=weather" in worker.log()
        assert json.loads(results.get("forecast:oslo")) == {"city": "oslo", "celsius": 7.0}
        [job_id] = [line for line in sent.stdout.splitlines() if not line.startswith("{")]
        assert results.hget("meta:{forecast:oslo}", "task_id") == job_id
        [(_, event)] = results.xrange("events:results")
        assert event["key"] == "forecast:oslo"
        assert event["kind"] == "forecast"

        shown = apiworker("result", "forecast", "oslo", "--meta")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout.splitlines()[0])["city"] == "oslo"
        health = apiworker("health")
        assert re.search(r"^ok\s+weather\s+http://127\.0\.0\.1", health.stdout, re.M), health
        # The route takes faults by its name like the built-in ones: a 503 is retried.
        injected = requests.post(
            f"{weather_sandbox}/_sandbox/faults",
            timeout=5,
            json={"route": "forecast", "kind": "status", "status": 503},
        )
        assert injected.status_code == 201, injected.text
        retried = apiworker("enqueue", TASK, "bergen", "--wait")
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout.splitlines()[-1])["celsius"] == 9.5
        counts = requests.get(f"{weather_sandbox}/_sandbox/requests", timeout=5).json()
        assert counts["counts"]["forecast"] == 4  # oslo, the probe, bergen's 503 and retry
        # A city the upstream does not know: a typed failure with its record.
        missing = apiworker("enqueue", TASK, "atlantis", "--wait")
        assert missing.returncode == 1
        assert "NotFound" in missing.stderr
        wait_for(lambda: results.xlen("events:failures") == 1, timeout=10, what="a failure record")

        top = apiworker("top", "--once")
        assert top.returncode == 0, top.stderr
        assert re.search(r"│ weather\s+│\s+\d+ │", top.stdout), top.stdout  # its queue
        assert re.search(r"│ weather\s+│ closed", top.stdout), top.stdout  # its breaker
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert re.search(r'apiworker_upstream_requests_total\{[^}]*service="weather"', scraped)
        assert 'apiworker_queue_depth{queue="weather"}' in scraped
        assert 'apiworker_circuit_open{service="weather"}' in scraped
    finally:
        results.close()
        worker.stop()
        producer.close()


def test_the_guides_settings_and_sandbox_path_join_the_services(weather_package: Path) -> None:
    """Installed, the package's variables are settings the service reads (the README
    check, the suite's clean environment) and offline mode points it at the sandbox."""
    code = (
        "import json; from settings import setting_names; from upstreams import "
        "offline_settings; print(json.dumps([sorted(setting_names()), "
        "offline_settings('http://127.0.0.1:9', 'token')]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(weather_package), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    names, offline = json.loads(done.stdout)
    assert {"WEATHER_BASE_URL", "WEATHER_RATE_LIMIT", "WEATHER_RATE_LIMIT_BURST"} <= set(names)
    assert offline["WEATHER_BASE_URL"] == "http://127.0.0.1:9/weather/v1"
    assert "WEATHER_BASE_URL" not in offline_settings("http://127.0.0.1:9", "token")


def test_a_bad_value_of_the_guides_settings_stops_the_worker_at_start(
    own_redis: str, sandbox_server: object, weather_package: Path
) -> None:
    """WEATHER_RATE_LIMIT='fast': the worker exits 2 at start with one line, no traceback."""
    env = worker_environment(
        own_redis,
        sandbox_server,
        WEATHER_RATE_LIMIT="fast",
        PYTHONPATH=os.pathsep.join([str(weather_package), str(REPO_ROOT)]),
    )
    started = subprocess.run(
        [sys.executable, "-m", "worker"], env={**os.environ, **env}, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = (started.stdout + started.stderr).strip()
    assert started.returncode == 2, output
    assert "WEATHER_RATE_LIMIT='fast': must be a number" in output
    assert "Traceback" not in output
