"""Adding an upstream is one client module, one registry entry and its tasks: no other file.

The test writes a fourth upstream (a weather API) into a temporary directory, installs
its entry through the `apiworker.upstreams` entry-point group (a bare `.dist-info` on the
worker's PYTHONPATH), serves the upstream itself, and runs one job through a real worker:
the worker's queue, routes and task modules come from the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops.producer import producer_app
from tests.integration.conftest import with_db, worker_environment
from tests.support.celery_worker import REPO_ROOT, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

CLIENT = """
import os

from apis.client import ApiClient, Payload
from apis.config import ApiSettings, UpstreamConfig
from apis.paths import segment


class WeatherAPI(ApiClient):
    service = "weather"

    @classmethod
    def configure(cls, settings: ApiSettings) -> UpstreamConfig:
        return settings.upstream(
            cls.service,
            base_url=os.environ.get("WEATHER_BASE_URL"),
            base_url_setting="WEATHER_BASE_URL",
        )

    def probe(self) -> object:
        return self.forecast("oslo")

    def forecast(self, city: str) -> Payload:
        return self.fetch(f"/forecast/{segment(city, name='city', service=self.service)}")
"""

TASKS = """
from celery import shared_task

from apis import get_client
from tasks.base import UpstreamTask
from weather_api import WeatherAPI


@shared_task(name="weather_tasks.fetch_forecast", base=UpstreamTask, bind=True)
def fetch_forecast(self, city):
    return get_client(WeatherAPI).forecast(city).data
"""

ENTRY = """
from upstreams import Upstream

UPSTREAM = Upstream(
    name="weather",
    client="weather_api:WeatherAPI",
    tasks="weather_tasks",
    base_url_setting="WEATHER_BASE_URL",
    description="a weather API",
    rate_limit_setting="WEATHER_RATE_LIMIT",
)
"""


class _Forecasts(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        city = self.path.rsplit("/", 1)[-1]
        body = json.dumps({"city": city, "celsius": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def weather_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forecasts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def weather_plugin(tmp_path: Path) -> Path:
    (tmp_path / "weather_api.py").write_text(CLIENT)
    (tmp_path / "weather_tasks.py").write_text(TASKS)
    (tmp_path / "weather_entry.py").write_text(ENTRY)
    dist = tmp_path / "weather_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: weather-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[apiworker.upstreams]\nweather = weather_entry:UPSTREAM\n"
    )
    return tmp_path


def test_a_fourth_upstream_added_from_outside_runs_a_job_on_its_own_queue(
    own_redis: str, sandbox_server: Any, weather_upstream: str, weather_plugin: Path
) -> None:
    """A job of the new upstream, sent to its queue, runs through a real worker."""
    env = worker_environment(
        own_redis,
        sandbox_server,
        WEATHER_BASE_URL=weather_upstream,
        METRICS_PORT="0",
        PYTHONPATH=os.pathsep.join([str(weather_plugin), str(REPO_ROOT)]),
    )
    producer = producer_app(env["CELERY_BROKER_URL"], with_db(own_redis, 2))
    worker = WorkerProcess(env).start(producer)
    try:
        result = producer.send_task("weather_tasks.fetch_forecast", args=["oslo"], queue="weather")
        assert result.get(timeout=30) == {"city": "oslo", "celsius": 7}
        wait_for(lambda: "task=weather_tasks.fetch_forecast" in worker.log(), timeout=10,
                 what="the job's outcome line")  # fmt: skip
        assert "queue=weather" in worker.log()
        # The operator CLI knows the new task (the public tasks of every registered
        # upstream) and routes it to the upstream's queue, as the worker's routes say.
        sent = subprocess.run(
            [sys.executable, "-m", "ops.cli", "enqueue", "weather_tasks.fetch_forecast", "bergen",
             "--wait"],
            env=env,
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1]) == {"city": "bergen", "celsius": 7}
        assert worker.log().count("queue=weather") == 2
    finally:
        worker.stop()
        producer.close()
