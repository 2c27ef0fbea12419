"""README's "Adding an upstream", followed as written: a fourth upstream, no file of the
service edited; and the same upstream built in, one new module and one registry entry.

The test writes out every code block of that section under the file name its first line
gives (`# weather_upstream/client.py`...), turns the block of `pyproject.toml` into the
installed package's entry points (a bare `.dist-info` on PYTHONPATH, as `pip install`
leaves it), starts the sandbox (`python -m sandbox`, serving the guide's route) and a
real worker with that package, and runs jobs through them: the result stored under its
documented key with its metadata and event, the CLI's `result` and `health` knowing the
new upstream, and a bad value of its settings stopping the worker at start with one line.

The built-in form runs in a copy of the service's packages: `tasks/weather.py` (its
settings, client, task, periodic job and sandbox route) and one entry appended to
`upstreams.BUILT_IN`, every other file as it is; the CLI, beat, `health`, `top`,
`/metrics`, the README's checks and the sandbox know it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def serving_sandbox(cwd: Path, *pythonpath: Path) -> Iterator[str]:
    """`python -m sandbox` from `cwd` with `pythonpath`, on a free port, until the end."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in pythonpath)}
    server = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _connects(port), timeout=30, what="the sandbox")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=15)


@pytest.fixture(scope="module")
def weather_sandbox(weather_package: Path) -> Iterator[str]:
    """`python -m sandbox` with the package installed: the guide's route is served."""
    with serving_sandbox(REPO_ROOT, weather_package, REPO_ROOT) as url:
        yield url


def known_to_top_and_metrics(screen: str, metrics_port: int) -> None:
    """`top --once` shows the weather queue and breaker; the worker's /metrics count its
    calls and show its queue and circuit."""
    assert re.search(r"│ weather\s+│\s+\d+ │", screen), screen  # its queue
    assert re.search(r"│ weather\s+│ closed", screen), screen  # its breaker
    scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert re.search(r'apiworker_upstream_requests_total\{[^}]*service="weather"', scraped)
    assert 'apiworker_queue_depth{queue="weather"}' in scraped
    assert 'apiworker_circuit_open{service="weather"}' in scraped


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
        known_to_top_and_metrics(top.stdout, metrics_port)
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


PACKAGES = ("apis", "brokers", "redisconn", "settings", "telemetry", "upstreams", "results",
            "tasks", "worker", "ops", "sandbox")  # fmt: skip

BUILT_IN_MODULE = """\
\"\"\"A weather API, built in: its settings, client, tasks and sandbox route.\"\"\"

from __future__ import annotations

from typing import Any

from celery import shared_task
from pydantic import Field

from apis import get_client
from apis.client import ApiClient, Payload
from apis.conditional import Validators
from apis.config import UpstreamSettings
from apis.paths import segment
from tasks import validation
from tasks.base import UpstreamTask
from tasks.errors import InvalidPayload
from results.runtime import get_runtime
from results.single_flight import FetchOnceJob
from upstreams import SandboxRoute


class WeatherSettings(UpstreamSettings):
    weather_base_url: str | None = None
    weather_refresh_interval: float = Field(600.0, ge=0)


class WeatherAPI(ApiClient):
    service = "weather"

    def probe(self) -> object:
        return self.forecast("oslo")

    def forecast(self, city: str, *, validators: Validators | None = None) -> Payload:
        path = f"/forecast/{segment(city, name='city', service=self.service)}"
        return self.fetch(path, validators=validators)


def forecast_summary(body: Any) -> dict[str, Any]:
    try:
        return {"city": str(body["city"]), "celsius": float(body["temperature"]["celsius"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidPayload(f"not a forecast: {exc!r}") from exc


FORECAST = FetchOnceJob(kind="forecast", get=WeatherAPI.forecast, transform=forecast_summary)


@shared_task(name="tasks.weather.fetch_forecast", base=UpstreamTask, bind=True)
def fetch_forecast(self: UpstreamTask, city: str) -> dict[str, Any]:
    checked = validation.slug(city)
    return FORECAST.run(get_client(WeatherAPI), checked, self.request.id, runtime=get_runtime())


@shared_task(name="tasks.weather.refresh_forecasts", base=UpstreamTask, bind=True, bulk=True)
def refresh_forecasts(self: UpstreamTask) -> int:
    for city in CELSIUS:
        fetch_forecast.delay(city)
    return len(CELSIUS)


CELSIUS = {"oslo": 7.0, "bergen": 9.5}


def forecast_answer(request: object, city: str) -> tuple[int, object]:
    if city not in CELSIUS:
        return 404, {"error": "unknown city"}
    return 200, {"city": city, "temperature": {"celsius": CELSIUS[city]}}


SANDBOX_ROUTES = (
    SandboxRoute("forecast", r"/weather/v1/forecast/(?P<key>[^/]+)/?", forecast_answer),
)
"""

BUILT_IN_ENTRY = """\
    Upstream(
        name="weather",
        client="tasks.weather:WeatherAPI",
        tasks="tasks.weather",
        base_url_setting="WEATHER_BASE_URL",
        description="a weather API",
        rate_limit_setting="WEATHER_RATE_LIMIT",
        result_kinds=("forecast",),
        settings="tasks.weather:WeatherSettings",
        periodic=(
            Periodic(
                "refresh-forecasts", "tasks.weather.refresh_forecasts", "WEATHER_REFRESH_INTERVAL"
            ),
        ),
        sandbox_path="/weather/v1",
        sandbox_routes="tasks.weather:SANDBOX_ROUTES",
    ),
"""

#: What the README needs for the built-in upstream: its row of the upstreams' table, its
#: variables in the settings tables and its task names.
README_ROWS = {
    "| Semaphore CI, API v1alpha |": "| a weather API | `tasks.weather:WeatherAPI` | "
    "`tasks.weather` | `weather` | `WEATHER_BASE_URL` | `WEATHER_RATE_LIMIT` | yes |",
    "| `SEMAPHORE_API_TOKEN` |": "| `WEATHER_BASE_URL` | unset | the weather API |\n"
    "| `WEATHER_REFRESH_INTERVAL` | `600` | seconds between forecast refreshes |\n"
    "| `WEATHER_RATE_LIMIT` | `0` | its budget |\n"
    "| `WEATHER_RATE_LIMIT_BURST` | `0` | its bucket |\n"
    "| `WEATHER_CONCURRENCY` | `0` | its requests in flight |\n"
    "| `tasks.weather.fetch_forecast` | `tasks.weather.refresh_forecasts` | |",
}


def _product_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for package in PACKAGES
        for path in (root / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def built_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's packages copied, with the one module and the one entry added."""
    root = tmp_path_factory.mktemp("built-in")
    for package in PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "tests" / "unit").mkdir(parents=True)
    for name in ("tests/__init__.py", "tests/unit/__init__.py", "tests/unit/test_readme.py"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "tasks" / "weather.py").write_text(BUILT_IN_MODULE)
    registry = root / "upstreams" / "__init__.py"
    text = registry.read_text()
    end = text.index("\n)\n", text.index("BUILT_IN = ("))
    registry.write_text(text[: end + 1] + BUILT_IN_ENTRY + text[end + 1 :])
    return root


def test_a_built_in_upstream_is_one_module_and_one_entry(built_in: Path) -> None:
    """Of the service's files, only the registry differs, and one module is new."""
    before, after = _product_files(REPO_ROOT), _product_files(built_in)
    assert sorted(set(after) - set(before)) == ["tasks/weather.py"]
    changed = [name for name in before if before[name] != after.get(name)]
    assert changed == ["upstreams/__init__.py"]


def test_the_readme_checks_ask_for_the_built_in_upstreams_rows(built_in: Path) -> None:
    """The README's checks fail until its table row, variables and tasks are there."""

    def readme_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             "tests/unit/test_readme.py"],
            cwd=built_in, env={**os.environ, "PYTHONPATH": str(built_in)},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    undocumented = readme_check()
    assert undocumented.returncode == 1, undocumented.stdout
    for name in ("WEATHER_BASE_URL", "WEATHER_REFRESH_INTERVAL", "tasks.weather.fetch_forecast"):
        assert name in undocumented.stdout
    assert "test_the_table_of_upstreams_is_the_registry FAILED" in undocumented.stdout or (
        "FAILED tests/unit/test_readme.py::test_the_table_of_upstreams_is_the_registry"
        in undocumented.stdout
    )
    readme = built_in / "README.md"
    text = readme.read_text()
    for anchor, rows in README_ROWS.items():
        start = text.index(anchor)
        end = text.index("\n", start)
        text = text[: end + 1] + rows + "\n" + text[end + 1 :]
    readme.write_text(text)
    documented = readme_check()
    assert documented.returncode == 0, documented.stdout


def test_the_built_in_upstream_runs_through_the_cli_beat_health_top_and_metrics(
    own_redis: str, sandbox_server: object, built_in: Path
) -> None:
    """From the copy: the sandbox serves its route, a worker runs its job on its own
    queue, beat schedules its periodic job, and `health`, `top` and /metrics show it."""
    metrics_port = free_port()
    with serving_sandbox(built_in, built_in) as sandbox_url:
        env = worker_environment(
            own_redis,
            sandbox_server,
            REDIS_URL=with_db(own_redis, 3),
            CELERY_BROKER_URL=with_db(own_redis, 4),
            CELERY_RESULT_BACKEND=with_db(own_redis, 5),
            WEATHER_BASE_URL=f"{sandbox_url}/weather/v1",
            PYTHONPATH=str(built_in),
            METRICS_PORT=str(metrics_port),
        )
        _runs_in_the_copy(built_in, env, metrics_port)


def _runs_in_the_copy(built_in: Path, env: dict[str, str], metrics_port: int) -> None:
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env, cwd=built_in).start(producer)
    results = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    try:

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, *args], env={**os.environ, **env},
                cwd=built_in, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        sent = run("-m", "ops.cli", "enqueue", "tasks.weather.fetch_forecast", "oslo", "--wait")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1]) == {"city": "oslo", "celsius": 7.0}
        assert "queue=weather" in worker.log()
        assert json.loads(results.get("forecast:oslo")) == {"city": "oslo", "celsius": 7.0}
        shown = run("-m", "ops.cli", "result", "forecast", "oslo")
        assert json.loads(shown.stdout) == {"city": "oslo", "celsius": 7.0}, shown.stderr
        health = run("-m", "ops.cli", "health")
        assert re.search(r"^ok\s+weather\s+http://127\.0\.0\.1", health.stdout, re.M), health
        top = run("-m", "ops.cli", "top", "--once")
        known_to_top_and_metrics(top.stdout, metrics_port)
        schedule = run(
            "-c",
            "import json; from apis import get_settings; from worker.beat import "
            "beat_schedule; print(json.dumps({k: v['task'] for k, v in "
            "beat_schedule(get_settings()).items()}))",
        )
        assert json.loads(schedule.stdout)["refresh-forecasts"] == "tasks.weather.refresh_forecasts"
    finally:
        results.close()
        worker.stop()
        producer.close()
