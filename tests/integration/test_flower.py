"""Flower, the monitoring the service promises: its API stays closed without credentials,
and in a real browser (Debian's headless Chromium, driven by Selenium through the
distribution's chromedriver) it shows this service's workers and jobs on each broker,
through the Redis broker's reliable fetch too, and refuses a wrong password."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from celery import Celery
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from ops.processes.worker import WorkerProcess
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import free_port

USER, PASSWORD = "ops", "s3cret-flower"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TIMEOUT = 30


def _answers(url: str, **kwargs: Any) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2, **kwargs)
    except requests.ConnectionError:
        return None


@contextmanager
def flower(worker_env: dict[str, str], **env: str) -> Iterator[str]:
    """`celery -A worker flower` on a free loopback port, answering; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        cwd=REPO_ROOT, env={**os.environ, **worker_env, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # A Response is falsy for 4xx, so wait for "any answer", then look at it.
        wait_for(lambda: _answers(url + "/healthcheck") is not None, timeout=TIMEOUT,
                 what="flower")  # fmt: skip
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


# Flower's authentication does not depend on the broker: one is enough.
@pytest.mark.broker("redis")
def test_flower_requires_basic_auth(worker_env: dict[str, str]) -> None:
    """With FLOWER_BASIC_AUTH: 401 without it or with a wrong password, 200 with it."""
    with flower(worker_env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}") as url:
        api = f"{url}/api/workers"
        assert _answers(api).status_code == 401
        assert _answers(api, auth=(USER, PASSWORD)).status_code == 200
        assert _answers(api, auth=(USER, "wrong")).status_code == 401


@pytest.mark.broker("redis")
def test_flowers_api_without_basic_auth_needs_flower_unauthenticated_api(
    worker_env: dict[str, str],
) -> None:
    """No FLOWER_BASIC_AUTH (`make run`): the API answers 401 until
    FLOWER_UNAUTHENTICATED_API=true opens it, as the README says."""
    with flower(worker_env) as url:
        assert _answers(f"{url}/api/workers").status_code == 401
    with flower(worker_env, FLOWER_UNAUTHENTICATED_API="true") as url:
        assert _answers(f"{url}/api/workers").status_code == 200


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the distribution's packages, driven through its
    chromedriver (Selenium is told both paths, so it downloads nothing)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true needs chromium and chromium-driver for the Flower browser test")
        pytest.skip("chromium or chromedriver is not installed (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    driver.execute_cdp_cmd("Network.enable", {})
    try:
        yield driver
    finally:
        driver.quit()


def open_as(driver: Any, url: str, user: str, password: str) -> int:
    """Load `url` sending basic auth on every request of the page, as a browser does once
    the user typed the credentials; the HTTP status of the page itself."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    driver.get(url)
    status: int = driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus"
    )
    return status


def shows(driver: Any, url: str, *texts: str) -> bool:
    """The page at `url` (reloaded) shows every one of `texts`, as the user reads it: the
    rendered text, compared without whitespace (a narrow cell wraps a long name). A job's
    page is a 404 until Flower has had its events, which the worker sends after the job's
    result is stored: not shown yet."""
    status = open_as(driver, url, USER, PASSWORD)
    if status == 404:
        return False
    assert status == 200
    page = "".join(driver.find_element("tag name", "body").text.split())
    return all("".join(text.split()) in page for text in texts)


def test_flower_in_a_browser_shows_workers_and_jobs(
    browser: Any,
    worker_env: dict[str, str],
    producer: Celery,
    celery_worker: WorkerProcess,
    sandbox: Any,
) -> None:
    """Behind basic auth Flower shows the worker, a finished job with its arguments and
    result, a failed job with its error; a wrong password gets 401 and no page."""
    with flower(worker_env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}") as url:
        assert open_as(browser, url + "/", USER, "wrong") == 401
        assert celery_worker.name not in browser.page_source
        wait_for(lambda: shows(browser, url + "/", celery_worker.name), timeout=TIMEOUT,
                 what="Flower's page of workers to list the worker")  # fmt: skip
        # Flower turns the workers' task events on every few seconds; now, so that the
        # jobs below are seen without waiting for its timer.
        producer.control.enable_events()
        done = producer.send_task("tasks.pokemon.fetch_pokemon", args=["charizard"])
        done.get(timeout=TIMEOUT)
        failed = producer.send_task("tasks.pokemon.fetch_pokemon", args=["missingno"])
        failed.get(timeout=TIMEOUT, propagate=False)
        finished = (f"{url}/task/{done.id}", "SUCCESS", "['charizard']", "90.5 kg")
        wait_for(lambda: shows(browser, *finished), timeout=TIMEOUT,
                 what="the finished job with its arguments and result")  # fmt: skip
        error = (f"{url}/task/{failed.id}", "FAILURE", "['missingno']", "NotFound")
        wait_for(lambda: shows(browser, *error), timeout=TIMEOUT,
                 what="the failed job with its error")  # fmt: skip
