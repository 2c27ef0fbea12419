"""The README's ACL user is enough for the whole service, and no more than it needs.

A real redis-server gets the exact `ACL SETUSER` line the README gives operators; a
worker, beat and the operator CLI then run as that user only. Redis's ACL LOG records
every refused command, so an empty log proves nothing the service does was refused.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ops.processes.worker import WorkerProcess
from ops.producer import producer_app
from tests.integration.conftest import worker_environment
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import RedisServer

README = (REPO_ROOT / "README.md").read_text()
PASSWORD = "acl-test-password-5d1e"


def readme_acl_line() -> list[str]:
    """The `ACL SETUSER apiworker ...` line of the README, with the test's password."""
    found = re.search(r"^ACL SETUSER apiworker .+$", README, re.MULTILINE)
    assert found, "README.md gives no ACL SETUSER line for operators"
    return shlex.split(found.group(0).replace("CHANGE-ME", PASSWORD))


@pytest.fixture
def acl_redis() -> Iterator[tuple[RedisServer, redis.Redis]]:
    """A private Redis with the README's user; the default user stays for the checks."""
    server = RedisServer().start()
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        admin.client_setname("admin")
        admin.execute_command(*readme_acl_line())
        admin.acl_log_reset()
        yield server, admin
    finally:
        admin.close()
        server.cleanup()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `apiworker` command, as an operator runs it."""
    command = Path(sys.executable).with_name("apiworker")
    return subprocess.run(
        [str(command), *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60, cwd=REPO_ROOT, check=False,
    )  # fmt: skip


def test_the_readme_acl_user_serves_jobs_beat_and_the_cli_with_nothing_refused(
    acl_redis: tuple[RedisServer, redis.Redis], sandbox: Any, tmp_path: Path
) -> None:
    """Worker, beat and CLI as the ACL user: jobs stored, every command exit 0, ACL LOG empty."""
    server, admin = acl_redis
    url = f"redis://apiworker:{PASSWORD}@127.0.0.1:{server.port}/0"
    env = worker_environment(
        url, sandbox, POKEMON_CATALOG="mew", POKEMON_REFRESH_INTERVAL="1", CATALOG_BATCH_SIZE="0"
    )
    env["CELERY_BROKER_URL"] = url.replace("/0", "/1")
    env["CELERY_RESULT_BACKEND"] = url.replace("/0", "/2")
    producer = producer_app(env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"])
    worker = WorkerProcess(env, concurrency=2)
    beat_log = tmp_path / "beat.log"
    beat = None
    try:
        worker.start(producer)
        with beat_log.open("wb") as log:
            beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO"],
                cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: admin.exists("pokemon:mew"), timeout=30, what="beat's job stored")
        producer.send_task("tasks.pokemon.fetch_pokemon", args=["Not A Name!"])
        wait_for(lambda: admin.xlen("events:failures"), timeout=20, what="a failure record")

        commands = [
            ("enqueue", "tasks.pokemon.fetch_pokemon", "pikachu", "--wait", "--timeout", "20"),
            ("result", "pokemon", "pikachu", "--meta"),
            ("queues",),
            ("failures", "list"),
            ("health", "--timeout", "2"),
        ]
        for args in commands:
            outcome = cli(env, *args)
            assert outcome.returncode == 0, (args, outcome.stdout, outcome.stderr)
            assert PASSWORD not in outcome.stdout + outcome.stderr
        assert beat.poll() is None, beat_log.read_text()
        assert worker.alive
        users = {client["user"] for client in admin.client_list() if client["name"] != "admin"}
        assert "apiworker" in users
        assert admin.acl_log() == []
    finally:
        if beat is not None:
            beat.terminate()
            beat.wait(timeout=15)
        worker.stop()
        producer.close()


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
        ("KEYS", "*"),
        ("SCRIPT", "FLUSH"),
        ("FLUSHDB",),
    ],
)
def test_the_readme_acl_user_is_refused_admin_commands(
    acl_redis: tuple[RedisServer, redis.Redis], command: tuple[str, ...]
) -> None:
    """What the service never needs, its user cannot do."""
    server, _ = acl_redis
    user = redis.Redis(port=server.port, username="apiworker", password=PASSWORD)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.execute_command(*command)
    user.close()
