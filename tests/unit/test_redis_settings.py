"""Redis settings: validated at start, translated for Celery, kombu and redbeat, masked."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from apis.config import ApiSettings
from redisconn import RedisTarget
from redisconn.celery_config import connection_config
from settings import WorkerSettings
from telemetry.redact import masked_url, url_passwords
from upstreams import BUILT_IN

SENTINELS = {
    "redis_sentinels": "10.0.0.1:26379, 10.0.0.2:26380,10.0.0.3",
    "redis_sentinel_master": "main",
}


def sentinel_target(**extra: object) -> RedisTarget:
    target = WorkerSettings(**SENTINELS, **extra).redis  # type: ignore[arg-type]
    return target


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"redis_sentinels": "h:26379"}, "REDIS_SENTINELS and REDIS_SENTINEL_MASTER"),
        ({"redis_sentinel_master": "main"}, "REDIS_SENTINELS and REDIS_SENTINEL_MASTER"),
        ({**SENTINELS, "redis_sentinels": "h:notaport"}, "host:port"),
        ({**SENTINELS, "redis_sentinels": "h:70000"}, "host:port"),
        ({"redis_url": "http://h:6379/0"}, "redis://, rediss:// or unix://"),
        ({"redis_tls": True}, "REDIS_TLS is for Sentinel"),
        ({"redis_tls_ca_file": "{ca}"}, "REDIS_URL is not rediss://"),
        ({"redis_url": "rediss://h/0", "redis_tls_cert_file": "{ca}"}, "go together"),
        ({**SENTINELS, "redis_tls_ca_file": "{ca}"}, "set REDIS_TLS=true"),
        ({"redis_url": "rediss://h/0", "redis_tls_ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({**SENTINELS, "redis_db": "16"}, "redis_db"),
    ],
)
def test_an_inconsistent_redis_setting_stops_the_start(
    settings: dict[str, object], message: str, tmp_path: Path
) -> None:
    """Each mistake is refused with a message naming what to fix."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    given = {k: str(v).replace("{ca}", str(ca)) for k, v in settings.items()}
    with pytest.raises(ValidationError, match=message):
        WorkerSettings(**given)  # type: ignore[arg-type]


def test_sentinel_settings_replace_redis_url() -> None:
    """With sentinels, the target is the named master; REDIS_URL is not used."""
    target = sentinel_target(redis_url="redis://ignored:1/0", redis_db="3")
    assert target.url is None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (target.master, target.db) == ("main", 3)


def test_the_broker_backend_and_beat_go_through_the_sentinels_when_not_set_apart() -> None:
    """kombu's sentinel:// broker, Celery's Sentinel backend, redbeat's redis-sentinel."""
    target = sentinel_target(
        redis_username="svc", redis_password="p@ss/word", redis_sentinel_password="sentinel-pw"
    )
    config = connection_config(target, broker_url=None, result_backend=None, beat_retry_seconds=300)
    expected = (
        "sentinel://svc:p%40ss%2Fword@10.0.0.1:26379/0;"
        "sentinel://10.0.0.2:26380/0;sentinel://10.0.0.3:26379/0"
    )
    assert config.settings["broker_url"] == expected
    assert config.settings["result_backend"] == expected
    for options in (config.broker_transport_options, config.backend_transport_options):
        assert options["master_name"] == "main"
        assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    beat = config.settings["redbeat_redis_options"]
    assert config.settings["redbeat_redis_url"] == "redis-sentinel://"
    assert beat["sentinels"] == list(target.sentinels)
    assert (beat["service_name"], beat["username"], beat["password"]) == (
        "main",
        "svc",
        "p@ss/word",
    )
    assert beat["retry_period"] == 300


def test_celery_urls_set_apart_win_over_the_sentinels() -> None:
    """CELERY_BROKER_URL / CELERY_RESULT_BACKEND are used as given, without master_name."""
    config = connection_config(
        sentinel_target(),
        broker_url="amqp://guest@localhost//",
        result_backend="redis://backend:6379/2",
        beat_retry_seconds=300,
    )
    assert config.settings["broker_url"] == "amqp://guest@localhost//"
    assert config.settings["result_backend"] == "redis://backend:6379/2"
    assert config.broker_transport_options == {}
    assert "broker_use_ssl" not in config.settings


def test_tls_options_verify_certificates_for_broker_backend_and_beat(tmp_path: Path) -> None:
    """A rediss:// REDIS_URL: every Celery connection requires a verified certificate."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    settings = WorkerSettings(redis_url="rediss://h:6380/0", redis_tls_ca_file=str(ca))  # type: ignore[arg-type]
    config = settings.celery_connection.settings
    for name in ("broker_use_ssl", "redis_backend_use_ssl", "redbeat_redis_use_ssl"):
        assert config[name] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}


def test_sentinel_with_tls_speaks_tls_to_sentinels_and_nodes(tmp_path: Path) -> None:
    """REDIS_TLS=true: the sentinels' options and the nodes' both carry the CA file."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    target = sentinel_target(redis_tls="true", redis_tls_ca_file=str(ca))
    config = connection_config(target, broker_url=None, result_backend=None, beat_retry_seconds=1)
    sentinel_kwargs = config.broker_transport_options["sentinel_kwargs"]
    assert sentinel_kwargs["ssl"] is True
    assert sentinel_kwargs["ssl_ca_certs"] == str(ca)
    assert config.settings["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_passwords_never_show_in_reprs_or_descriptions() -> None:
    """Targets, settings and URLs print `***` where a password would be."""
    url_target = RedisTarget.from_url("redis://svc:url-secret@h:6379/0")
    sentinel = sentinel_target(redis_password="node-secret", redis_sentinel_password="sent-secret")
    settings = WorkerSettings(redis_url="redis://svc:url-secret@h:6379/0")
    for text in (repr(url_target), url_target.describe(), repr(sentinel), repr(settings)):
        for secret in ("url-secret", "node-secret", "sent-secret"):
            assert secret not in text
    assert masked_url("redis://svc:url-secret@h:6379/0") == "redis://svc:***@h:6379/0"
    assert sorted(sentinel.secrets()) == ["node-secret", "sent-secret"]


def test_the_api_layer_shares_the_workers_redis_through_sentinel() -> None:
    """The breakers' and rate limits' Redis is the same Sentinel target."""
    api = ApiSettings(**SENTINELS)  # type: ignore[arg-type]
    upstream = api.upstream(BUILT_IN[0])
    assert upstream.state_redis == sentinel_target()
    assert ApiSettings(redis_url="").resolve_redis() is None


def test_every_url_of_a_failover_list_is_masked() -> None:
    """Celery's `amqp://h1;amqp://h2` form: no password of any URL survives masking, and
    each is known to the log redaction."""
    url = "amqp://guest:pw-one@n1:5672//;amqp://guest:pw-two@n2:5672//;amqp://n3:5672//"
    assert masked_url(url) == (
        "amqp://guest:***@n1:5672//;amqp://guest:***@n2:5672//;amqp://n3:5672//"
    )
    assert url_passwords(url) == ["pw-one", "pw-two"]
