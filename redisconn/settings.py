"""Where the service's Redis is and how to reach it: one URL, or Sentinel; TLS; ACL users.

`RedisSettings` reads the Redis variables, once per process (`get_redis_settings`): the
worker's and the API layer's sections are `RedisSection`s, which take their Redis fields
from that one object instead of reading the environment again, so the variables are
read, validated and reported once. `RedisTarget` is what the settings resolve to: a
frozen, hashable value the connection factory (`redisconn.factory`) turns into clients,
and whose repr never shows a password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
)

from telemetry.redact import masked_url

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_SENTINEL_PORT = 26379


def parse_node(address: str) -> tuple[str, int]:
    """`host:port` of one Redis Cluster node; a clear error otherwise."""
    host, sep, port_text = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a cluster node must be host:port, got {address!r}")
    return host, int(port_text)


def parse_sentinel(address: str) -> tuple[str, int]:
    """`host:port` (or `host`, port 26379) of one sentinel; a clear error otherwise."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep:
        host, port_text = port_text, str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a sentinel must be host:port, got {address!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class TlsFiles:
    """The certificates of a TLS connection; the server's is always verified."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_options(self) -> dict[str, Any]:
        """redis-py's (and kombu's, Celery's, redbeat's) names for these options."""
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.ca_file:
            options["ssl_ca_certs"] = self.ca_file
        if self.cert_file:
            options["ssl_certfile"] = self.cert_file
        if self.key_file:
            options["ssl_keyfile"] = self.key_file
        return options


@dataclass(frozen=True, repr=False)
class RedisTarget:
    """One Redis the service talks to: a URL, or a master found through sentinels."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    # The data nodes' ACL user behind Sentinel (with a URL, it is in the URL).
    username: str | None = None
    password: SecretStr | None = None
    # The sentinels' own ACL user, when they require one.
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    tls: TlsFiles | None = field(default=None)
    # A Redis Cluster: its seed nodes (any reachable one finds the rest).
    cluster_nodes: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_url(cls, url: str, tls: TlsFiles | None = None) -> RedisTarget:
        """A target for one URL; `rediss://` URLs verify against `tls` (or the system CAs)."""
        if tls is None and urlsplit(url).scheme == "rediss":
            tls = TlsFiles()
        return cls(url=url, tls=tls)

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def uses_cluster(self) -> bool:
        return bool(self.cluster_nodes)

    def describe(self) -> str:
        """A printable description: no password, ever."""
        if self.url is not None:
            return masked_url(self.url)
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        if self.cluster_nodes:
            nodes = ",".join(f"{host}:{port}" for host, port in self.cluster_nodes)
            return f"cluster via {nodes} ({scheme}://{user}<node>)"
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"sentinel {self.master} via {hosts} ({scheme}://{user}<master>/{self.db})"

    def __repr__(self) -> str:
        return f"RedisTarget({self.describe()})"

    def secrets(self) -> list[str]:
        """Every password this target carries, for the log filter to mask."""
        found = [s.get_secret_value() for s in (self.password, self.sentinel_password) if s]
        if self.url is not None and urlsplit(self.url).password:
            found.append(str(urlsplit(self.url).password))
        return found


class RedisSettings(BaseSettings):
    """The Redis settings of the worker and the API layer (each an upper-case variable).

    With REDIS_SENTINELS and REDIS_SENTINEL_MASTER set, they replace REDIS_URL: every
    client asks the sentinels where the master is, and asks again after a failover.
    """

    redis_url: str | None = DEFAULT_REDIS_URL
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str | None = Field(None, min_length=1, max_length=200)
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_db: int = Field(0, ge=0, le=15)
    # A Redis Cluster for the results, their events and the fleet's shared state: its seed
    # nodes, comma-separated `host:port`. REDIS_URL (or Sentinel) stays the broker's,
    # Celery's result backend's and beat's: none of them speaks Redis Cluster.
    redis_cluster_nodes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # With Sentinel there is no URL scheme to ask for TLS: this does (sentinels and data
    # nodes alike). With REDIS_URL, `rediss://` asks for it.
    redis_tls: bool = False
    redis_tls_ca_file: FilePath | None = None
    redis_tls_cert_file: FilePath | None = None
    redis_tls_key_file: FilePath | None = None
    # Before every key the service writes in Redis (results, streams, breakers, rate
    # limits, beat's schedule), so several deployments can share one Redis.
    result_key_prefix: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9:_.-]*$")

    @field_validator("redis_sentinels", "redis_cluster_nodes", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        """`REDIS_SENTINELS` and `REDIS_CLUSTER_NODES` are comma-separated `host:port`."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_sentinel(address)
        return value

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _check_cluster_nodes(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_node(address)
        return value

    @field_validator(
        "redis_url",
        "redis_sentinel_master",
        "redis_sentinel_username",
        "redis_sentinel_password",
        "redis_username",
        "redis_password",
        "redis_tls_ca_file",
        "redis_tls_cert_file",
        "redis_tls_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got {masked_url(value)}"
            )
        return value

    @model_validator(mode="after")
    def _check_redis(self) -> RedisSettings:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: set both")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: set both")
        tls_files = self.redis_tls_ca_file or self.redis_tls_cert_file
        if not self.redis_sentinels:
            scheme = urlsplit(self.redis_url).scheme if self.redis_url else ""
            if self.redis_cluster_nodes:
                pass  # REDIS_TLS and its files are the cluster's
            elif self.redis_tls and scheme != "rediss":
                raise ValueError("REDIS_TLS is for Sentinel; with REDIS_URL use rediss://")
            if tls_files and self.redis_url and scheme != "rediss":
                raise ValueError(
                    "REDIS_TLS_* files are set but REDIS_URL is not rediss://: "
                    "the connection would not use TLS"
                )
        elif tls_files and not self.redis_tls:
            raise ValueError("REDIS_TLS_* files are set but REDIS_TLS is not: set REDIS_TLS=true")
        return self

    def __repr_args__(self) -> Any:
        """Field values for repr and str, with any URL's password masked."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and "://" in value:
                value = ";".join(masked_url(part) for part in value.split(";"))
            yield name, value

    def tls_files(self) -> TlsFiles:
        return TlsFiles(
            ca_file=_path(self.redis_tls_ca_file),
            cert_file=_path(self.redis_tls_cert_file),
            key_file=_path(self.redis_tls_key_file),
        )

    def resolve_cluster(self) -> RedisTarget | None:
        """The Redis Cluster of REDIS_CLUSTER_NODES (with REDIS_USERNAME, REDIS_PASSWORD
        and, with REDIS_TLS, TLS on every node), or None when it is not set."""
        if not self.redis_cluster_nodes:
            return None
        return RedisTarget(
            cluster_nodes=tuple(parse_node(address) for address in self.redis_cluster_nodes),
            username=self.redis_username,
            password=self.redis_password,
            tls=self.tls_files() if self.redis_tls else None,
        )

    def resolve_redis(self) -> RedisTarget | None:
        """Where this process's Redis is; None when REDIS_URL is empty and no Sentinel."""
        if self.redis_sentinels:
            return RedisTarget(
                sentinels=tuple(parse_sentinel(address) for address in self.redis_sentinels),
                master=self.redis_sentinel_master,
                db=self.redis_db,
                username=self.redis_username,
                password=self.redis_password,
                sentinel_username=self.redis_sentinel_username,
                sentinel_password=self.redis_sentinel_password,
                tls=self.tls_files() if self.redis_tls else None,
            )
        if self.redis_url is None:
            return None
        tls = self.tls_files() if urlsplit(self.redis_url).scheme == "rediss" else None
        return RedisTarget.from_url(self.redis_url, tls)


def _path(value: Path | None) -> str | None:
    return None if value is None else str(value)


_current: list[RedisSettings] = []


def get_redis_settings() -> RedisSettings:
    """The process's Redis settings: the ones installed (`use_redis_settings`, by the
    settings tree at start), else read on first use; kept afterwards."""
    if not _current:
        _current[:] = [RedisSettings()]
    return _current[0]


def use_redis_settings(settings: RedisSettings | None) -> None:
    """Make `settings` the process's Redis settings (None: read them again on next use)."""
    _current[:] = [] if settings is None else [settings]


class _SharedRedisSource(PydanticBaseSettingsSource):
    """The Redis variables the process's `RedisSettings` read (those that were set)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # the whole mapping comes from __call__

    def __call__(self) -> dict[str, Any]:
        return get_redis_settings().model_dump(exclude_unset=True)


class _OwnEnvSource(EnvSettingsSource):
    """The environment, for the fields a section declares itself: not the Redis ones."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in RedisSettings.model_fields:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class RedisSection(RedisSettings):
    """A settings section that also knows where Redis is (the worker's, the API layer's):
    its Redis fields come from the one `RedisSettings` of the process, its own fields from
    the environment, and keywords override both."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _OwnEnvSource(settings_cls), _SharedRedisSource(settings_cls)
