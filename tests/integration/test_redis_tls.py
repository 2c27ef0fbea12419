"""TLS to Redis: a worker with the CA file serves jobs over TLS; a wrong CA is refused.

The server is a real `redis-server --tls-port` with certificates from a throwaway
authority (trustme) and client certificates required, so REDIS_TLS_CERT_FILE and
REDIS_TLS_KEY_FILE are exercised too. Its plain port is for the test's own checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from celery import Celery

import redisconn
from ops.processes.worker import WorkerProcess
from tests.integration.conftest import worker_environment
from tests.support.celery_worker import REPO_ROOT, wait_for
from tests.support.redis_server import RedisServer, free_port


@dataclass
class TlsRedis:
    server: RedisServer
    tls_port: int
    ca_file: Path
    wrong_ca_file: Path
    client_cert: Path
    client_key: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def env(self, ca_file: Path | None = None) -> dict[str, str]:
        return {
            "REDIS_URL": self.url,
            "REDIS_TLS_CA_FILE": str(ca_file or self.ca_file),
            "REDIS_TLS_CERT_FILE": str(self.client_cert),
            "REDIS_TLS_KEY_FILE": str(self.client_key),
        }

    def ssl_options(self) -> dict[str, Any]:
        return redisconn.TlsFiles(
            str(self.ca_file), str(self.client_cert), str(self.client_key)
        ).ssl_options()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A redis-server speaking TLS (client certificates required) beside a plain port."""
    authority, other_authority = trustme.CA(), trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1", "localhost")
    client_cert = authority.issue_cert("apiworker")
    paths = {
        name: tmp_path / name for name in ("ca", "wrong-ca", "srv", "srv.key", "cli", "cli.key")
    }
    authority.cert_pem.write_to_path(str(paths["ca"]))
    other_authority.cert_pem.write_to_path(str(paths["wrong-ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["srv"]))
    server_cert.private_key_pem.write_to_path(str(paths["srv.key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["cli"]))
    client_cert.private_key_pem.write_to_path(str(paths["cli.key"]))
    tls_port = free_port()
    server = RedisServer(
        args=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(paths["srv"]),
            "--tls-key-file", str(paths["srv.key"]),
            "--tls-ca-cert-file", str(paths["ca"]),
            "--tls-auth-clients", "yes",
        )
    ).start()  # fmt: skip
    try:
        yield TlsRedis(
            server, tls_port, paths["ca"], paths["wrong-ca"], paths["cli"], paths["cli.key"]
        )
    finally:
        server.cleanup()


def tls_producer(tls: TlsRedis) -> Celery:
    app = Celery("producer", broker=tls.url, backend=tls.url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_use_ssl=tls.ssl_options(),
        redis_backend_use_ssl=tls.ssl_options(),
    )
    return app


def only_redis_url(env: dict[str, str]) -> dict[str, str]:
    """Broker and backend follow REDIS_URL (and its TLS settings) when not set apart."""
    env.pop("CELERY_BROKER_URL")
    env.pop("CELERY_RESULT_BACKEND")
    return env


def test_a_worker_with_the_ca_file_serves_jobs_over_tls_only(
    tls_redis: TlsRedis, sandbox: Any
) -> None:
    """A job is stored, and every connection of the worker came in on the TLS port."""
    env = only_redis_url(worker_environment(tls_redis.server.url, sandbox, **tls_redis.env()))
    producer = tls_producer(tls_redis)
    plain = redis.Redis.from_url(tls_redis.server.url, decode_responses=True)
    worker = WorkerProcess(env, concurrency=2)
    try:
        worker.start(producer)
        producer.send_task("tasks.pokemon.fetch_pokemon", args=["pikachu"])
        wait_for(lambda: plain.exists("pokemon:pikachu"), timeout=20, what="pikachu stored")
        own = plain.client_id()
        ports = {
            int(client["laddr"].rsplit(":", 1)[1])
            for client in plain.client_list()
            if int(client["id"]) != own
        }
        assert ports == {tls_redis.tls_port}
    finally:
        worker.stop()
        producer.close()
        plain.close()


def test_a_wrong_ca_is_refused_with_a_certificate_error(tls_redis: TlsRedis) -> None:
    """A server certificate from another authority: the client says verification failed."""
    settings_env = tls_redis.env(ca_file=tls_redis.wrong_ca_file)
    target = redisconn.RedisTarget.from_url(
        settings_env["REDIS_URL"],
        redisconn.TlsFiles(
            str(tls_redis.wrong_ca_file), str(tls_redis.client_cert), str(tls_redis.client_key)
        ),
    )
    client = redisconn.client(target, socket_connect_timeout=2, retry=None)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()
    client.close()


def test_a_worker_with_a_wrong_ca_logs_the_certificate_error_and_stores_nothing(
    tls_redis: TlsRedis, sandbox: Any, tmp_path: Path
) -> None:
    """The worker never talks to a server it cannot verify, and its log says why."""
    env = only_redis_url(
        worker_environment(
            tls_redis.server.url, sandbox, **tls_redis.env(ca_file=tls_redis.wrong_ca_file)
        )
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo"],
            cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: "certificate verify failed" in log_path.read_text(errors="replace"),
            timeout=30,
            what="the certificate error in the worker's log",
        )
        plain = redis.Redis.from_url(tls_redis.server.url)
        assert plain.dbsize() == 0
        plain.close()
    finally:
        worker.terminate()
        worker.wait(timeout=15)
