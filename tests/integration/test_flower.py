"""Flower finds the app, and its API stays closed without credentials."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import free_port


def _answers(url: str, **kwargs) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2, **kwargs)
    except requests.ConnectionError:
        return None


def test_flower_requires_basic_auth(worker_env: dict[str, str]) -> None:
    """`celery -A worker flower` with FLOWER_BASIC_AUTH: 401 without it, 200 with it."""
    port = free_port()
    env = {**os.environ, **worker_env, "FLOWER_BASIC_AUTH": "ops:s3cret-flower"}
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        # A Response is falsy for 4xx, so wait for "any answer", then look at it.
        wait_for(lambda: _answers(url) is not None, timeout=30, what="flower")
        closed = _answers(url)
        assert closed is not None
        assert closed.status_code == 401
        opened = _answers(url, auth=("ops", "s3cret-flower"))
        assert opened is not None
        assert opened.status_code == 200
        assert _answers(url, auth=("ops", "wrong")).status_code == 401
    finally:
        flower.terminate()
        flower.wait(timeout=15)
