"""`make demo`, `make run` and the compose file, exercised as a newcomer would use them.

Each command runs as a real subprocess from the repository root. Neither may touch the
shared Redis: the demo always starts its own, and `ops.run` is pointed at a closed
port so that it starts a private one under a temporary folder.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ops.producer import producer_app
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import free_port
from tests.support.run_process import (
    START_TIMEOUT,
    RunProcess,
    clean_env,
    group_exists,
    port_closed,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
STOP_TIMEOUT = 30


def test_demo_shows_the_whole_flow() -> None:
    """Results, an event and the failure of the unknown name, all printed; exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "ops.demo"],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    stored = re.search(r"pokemon:charizard = (\{.*\})", out)
    assert stored is not None, out
    assert json.loads(stored.group(1))["name"] == "charizard"
    assert re.search(r"key=pokemon:charizard kind=pokemon id=charizard", out), out
    failure = re.search(r"task=tasks\.pokemon\.fetch_pokemon .*args=\[\"missingno\"\].*", out)
    assert failure is not None, out
    assert "error=NotFound" in failure.group(0)
    # The job's own failure, as its message, not the tuple of the exception's arguments.
    assert re.search(r"missingno: FAILURE NotFound: not found \[pokeapi GET \S+ -> 404\]", out), out
    assert "('not found'" not in out


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[..., RunProcess]]:
    """Start ops.run with a Redis URL nobody answers; everything is killed at the end."""
    started: list[RunProcess] = []

    def start(*args: str, **env: str) -> RunProcess:
        environment = clean_env(
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            APIWORKER_RUN_DIR=str(tmp_path / "run"),
            POKEMON_REFRESH_INTERVAL="0",
            WORKER_CONCURRENCY="2",
            METRICS_PORT="0",
            **env,
        )
        run = RunProcess(list(args), environment)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_everything()


def test_run_starts_private_redis_and_stops_everything_on_sigint(
    start_run: Callable[..., RunProcess], tmp_path: Path
) -> None:
    run = start_run("--workers", "2", "--flower-port", str(free_port()))
    redis_url = run.wait_printed(r"Redis:\s+(redis://\S+)").group(1)
    flower_url = run.wait_printed(r"Flower: (http://\S+)").group(1)
    run.wait_printed(r"started flower")
    pids = run.started()
    assert set(pids) == {"redis", "worker1", "worker2", "beat", "flower"}, run.text

    producer = producer_app(redis_url, redis_url)
    try:

        def both_workers_answer() -> bool:
            run.printed("")
            replies = producer.control.ping(timeout=0.5) or []
            return len({node for reply in replies for node in reply}) == 2

        wait_for(both_workers_answer, timeout=START_TIMEOUT, what="both workers to answer ping")
    finally:
        producer.close()

    def flower_answers() -> bool:
        run.printed("")
        try:
            with urllib.request.urlopen(flower_url + "/healthcheck", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_for(flower_answers, timeout=START_TIMEOUT, what="Flower's health check")

    # Flower starts once a worker answers, so its first look at the workers finds them.
    assert "Inspect method" not in run.text, run.text
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=STOP_TIMEOUT) == 0, run.text
    run.output.join()
    assert port_closed(int(urlsplit(redis_url).port or 0))
    assert not [name for name, pid in pids.items() if group_exists(pid)], run.text
    assert not group_exists(run.process.pid)
    assert (tmp_path / "run" / "redis" / "appendonlydir").is_dir()
    assert "everything started here has stopped" in run.text


def test_run_stops_the_rest_when_a_child_dies(start_run: Callable[..., RunProcess]) -> None:
    """A worker killed from outside: the others are stopped and the exit code is not 0."""
    run = start_run("--workers", "1", "--no-flower")
    run.wait_printed(r"started beat")
    pids = run.started()
    os.killpg(pids["worker1"], signal.SIGKILL)
    assert run.process.wait(timeout=STOP_TIMEOUT) == 1, run.text
    run.output.join()
    assert "worker1 exited unexpectedly" in run.text
    assert not [name for name, pid in pids.items() if group_exists(pid)], run.text


def test_children_of_a_sigkilled_run_end_with_it(start_run: Callable[..., RunProcess]) -> None:
    """SIGKILL of `ops.run` alone (no chance to clean up): its worker, beat and private
    Redis still stop, each through the parent-death signal; none is left orphaned."""
    run = start_run("--workers", "1", "--no-flower")
    run.wait_printed(r"started beat")
    pids = run.started()
    assert set(pids) == {"redis", "worker1", "beat"}, run.text
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(timeout=10)
    wait_for(
        lambda: not [name for name, pid in pids.items() if group_exists(pid)],
        timeout=STOP_TIMEOUT,
        what="the children of the killed run to exit",
    )


def test_run_explains_how_to_get_a_redis(
    start_run: Callable[..., RunProcess], tmp_path: Path
) -> None:
    """No answering REDIS_URL and no redis-server on PATH: exit 1 naming the three ways."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    run = start_run("--no-flower", PATH=str(empty))
    assert run.process.wait(timeout=STOP_TIMEOUT) == 1
    run.output.join()
    for remedy in ("install redis-server", "REDIS_URL", "docker compose up -d redis"):
        assert remedy in run.text
    assert run.started() == {}


def compose_command() -> list[str] | None:
    """Compose v2: the docker CLI's plugin, or a standalone `docker-compose` v2 binary."""
    candidates: list[list[str]] = []
    docker = shutil.which("docker")
    if docker is not None:
        candidates.append([docker, "compose"])
    venv_bin = str(Path(sys.executable).parent)
    standalone = shutil.which("docker-compose") or shutil.which("docker-compose", path=venv_bin)
    if standalone is not None:
        candidates.append([standalone])
    for command in candidates:
        probe = subprocess.run(
            [*command, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0 and re.search(r"version v?2", probe.stdout):
            return [*command, "-f", str(COMPOSE_FILE)]
    return None


def compose_model() -> dict[str, Any]:
    """The compose file as `docker compose config` resolves it, else as YAML says it."""
    compose = compose_command()
    if compose is not None:
        for extra in ([], ["--profile", "offline"]):
            checked = subprocess.run(
                [*compose, *extra, "config", "-q"],
                env=clean_env(FLOWER_BASIC_AUTH="a:b"), capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stderr
        resolved = subprocess.run(
            [*compose, "--profile", "offline", "config", "--format", "json"],
            env=clean_env(), capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        model: dict[str, Any] = json.loads(resolved.stdout)
        return model
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        pytest.fail("neither `docker compose` nor PyYAML is installed: cannot check the file")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_compose_file_describes_the_stack() -> None:
    """Valid for compose (when installed), and shaped as the README promises."""
    model = compose_model()
    services = model["services"]
    assert {"redis", "worker", "beat", "flower", "sandbox", "rabbitmq-1"} <= set(services)
    redis_service = services["redis"]
    assert redis_service["image"].startswith("redis:7")
    assert "--appendonly" in redis_service["command"]
    assert any(str(v).endswith(":/data") or "/data" in str(v) for v in redis_service["volumes"])
    assert "redis-cli" in redis_service["healthcheck"]["test"]
    for name in ("worker", "beat", "flower"):
        service = services[name]
        assert "container_name" not in service
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in services["worker"]  # so --scale worker=N can run
    assert services["worker"]["command"][:3] == ["python", "-m", "worker"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["sandbox"]["profiles"] == ["offline"]
    assert "--host" in services["sandbox"]["command"]


def test_compose_rabbitmq_profile_is_the_broker_of_worker_and_beat_when_chosen() -> None:
    """Three rabbitmq nodes sit in their own profile; worker, beat and Flower take their
    broker from CELERY_BROKER_URL (empty: Redis) and wait for the queues' policies only
    when the profile runs; each node keeps its data on a volume and refuses to start
    without a password and the shared cookie."""
    model = compose_model()
    nodes = [model["services"][f"rabbitmq-{n}"] for n in (1, 2, 3)]
    for n, rabbit in enumerate(nodes, start=1):
        assert rabbit["profiles"] == ["rabbitmq"]
        assert rabbit["image"].startswith("rabbitmq:3")
        assert rabbit["hostname"] == f"rabbitmq-{n}"
        assert f"rabbitmq-{n}-data:/var/lib/rabbitmq" in rabbit["volumes"]
        assert "rabbitmq-diagnostics" in rabbit["healthcheck"]["test"]
        assert all(port.startswith("127.0.0.1:") for port in rabbit.get("ports", []))
    for name in ("worker", "beat", "flower"):
        service = model["services"][name]
        assert service["environment"]["CELERY_BROKER_URL"] == "${CELERY_BROKER_URL:-}"
        assert service["depends_on"]["rabbitmq-policy"] == {
            "condition": "service_completed_successfully",
            "required": False,
        }
    script = (
        nodes[0]["command"][2].replace("$$", "$").replace("exec docker-entrypoint.sh", "exec true")
    )
    refused = subprocess.run(
        ["sh", "-c", script], env=clean_env(), capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 64
    assert "RABBITMQ_ADMIN_PASSWORD" in refused.stderr
    no_cookie = subprocess.run(
        ["sh", "-c", script], env=clean_env(RABBITMQ_DEFAULT_PASS="x"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert no_cookie.returncode == 64
    assert "RABBITMQ_COOKIE" in no_cookie.stderr


def test_flower_service_refuses_to_start_without_basic_auth() -> None:
    """The container's own check: an unset FLOWER_BASIC_AUTH stops it before Flower runs."""
    command = compose_model()["services"]["flower"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("$$", "$")  # compose's escape for a literal `$`
    refused = subprocess.run(
        ["sh", "-c", script], env=clean_env(), capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 64
    assert "FLOWER_BASIC_AUTH" in refused.stderr


def test_run_offline_gives_a_second_shell_everything_in_run_env(
    start_run: Callable[..., RunProcess], tmp_path: Path
) -> None:
    """`--offline --private-redis` with no upstream setting at all: the sandbox starts
    first, the Redis line says it is the private one, and one printed line
    (`source …/env`) gives a second shell with no setting of its own a green `health`, a
    job stored from the sandbox and its result; the file goes when the run stops."""
    run = start_run("--offline", "--private-redis", "--workers", "1", "--no-beat", "--no-flower")
    redis_url = run.wait_printed(r"Redis:\s+(redis://\S+)").group(1)
    run.wait_printed(r"Offline: the sandbox upstream at http://127\.0\.0\.1:\d+")
    assert "--private-redis: not using REDIS_URL" in run.text
    env_file = Path(run.wait_printed(r"Second shell: source (\S+)").group(1))
    assert env_file == tmp_path / "run" / "env"
    assert list(run.started())[:2] == ["redis", "sandbox"], run.text
    assert env_file.stat().st_mode & 0o077 == 0  # it may carry a password or a token
    assert f"export REDIS_URL={redis_url}\n" in env_file.read_text()
    # The worker's own "ready" line: it answers ping and consumes its queues.
    run.wait_printed(r"worker1\s+\|.* ready\.")
    # A new shell: none of the service's settings, and no venv on PATH.
    shell = clean_env(PATH="/usr/bin:/bin")
    second = subprocess.run(
        ["bash", "-c", f"source {env_file} && apiworker health && "
         "apiworker enqueue tasks.pokemon.fetch_pokemon charizard --wait >/dev/null && "
         "apiworker result pokemon charizard"],
        env=shell, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"^ok\s+pokeapi\s+http://127\.0\.0\.1", second.stdout, re.M), second.stdout
    assert "FAIL" not in second.stdout, second.stdout
    assert "skip" not in second.stdout, second.stdout
    assert json.loads(second.stdout.splitlines()[-1])["weight"] == "90.5 kg"
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=STOP_TIMEOUT) == 0, run.text
    assert not env_file.exists()


def test_make_run_passes_offline_and_args_to_ops_run() -> None:
    """`make run OFFLINE=1 ARGS="--workers 1"` runs ops.run with both (make -n shows the
    command without running it)."""
    shown = subprocess.run(
        ["make", "-n", "-o", "install", "run", "OFFLINE=1", "ARGS=--workers 1 --no-flower"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "-m ops.run --offline --workers 1 --no-flower" in shown
    quiet = subprocess.run(
        ["make", "-n", "-o", "install", "run", "OFFLINE=0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "--offline" not in quiet


def test_the_readme_names_the_compose_release_the_file_needs() -> None:
    """The file uses `depends_on: … required:` (Docker Compose 2.20's), and the README's
    Docker section says 2.20 or later is needed."""
    text = COMPOSE_FILE.read_text()
    assert re.search(r"^\s+required: false", text, re.M)
    readme = (REPO_ROOT / "README.md").read_text()
    docker = readme[readme.index("### Docker") : readme.index("### Kubernetes")]
    assert "Docker Compose 2.20 or later" in docker
