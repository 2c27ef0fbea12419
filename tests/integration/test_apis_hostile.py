"""The API layer against a hostile upstream: the sandbox's hostile faults over real HTTP.

Each test is one trick an attacker-controlled or broken upstream can play, and the bound
the client keeps: links stay on their host, one deadline for the whole exchange, bounded
paging and decoding, typed errors, no secret in any error.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from apis import CmsAPI, PokeAPI, SemaphoreAPI, errors
from apis.client import ApiClient
from apis.cms import CmsSettings
from apis.config import ApiSettings, UpstreamConfig
from apis.semaphore import SemaphoreSettings

C = TypeVar("C", bound=ApiClient)


class Bystander:
    """A second server on loopback that records every byte anyone sends it."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    while data := connection.recv(65536):
                        self.received += data
                        if b"\r\n\r\n" in self.received:
                            break
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def bystander() -> Iterator[Bystander]:
    server = Bystander()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def token() -> str:
    """A unique, real-looking token per test: found anywhere, it leaked from this test."""
    return f"smp_live_{uuid.uuid4().hex}"


@pytest.fixture
def make_client(sandbox: Any, token: str) -> Iterator[Callable[..., Any]]:
    """A client of the sandbox with one attempt and short timeouts; keyword args override.
    The sandbox accepts this test's token until the test ends."""
    accepted = sandbox.semaphore_token
    sandbox.semaphore_token = token

    def build(cls: type[C], **overrides: Any) -> C:
        values: dict[str, Any] = {
            "pokeapi_base_url": sandbox.pokeapi_url,
            "cms_base_url": sandbox.cms_url,
            "semaphore_base_url": sandbox.semaphore_url,
            "semaphore_api_token": token,
            "http_retry_attempts": 1,
            "http_connect_timeout": 0.5,
            "http_read_timeout": 1,
            "redis_url": "",
        }
        values.update(overrides)
        return cls(cls.configure(ApiSettings(**values)))

    try:
        yield build
    finally:
        sandbox.semaphore_token = accepted


def assert_clean(exc: BaseException, secret: str) -> None:
    """The secret is in no channel an exception travels through."""
    channels = [str(exc), repr(exc), repr(exc.args), repr(pickle.loads(pickle.dumps(exc)).args)]
    assert not [channel for channel in channels if secret in channel]


# -- 1. links stay on their host ---------------------------------------------------


def test_a_base_url_without_a_path_is_refused_at_start() -> None:
    """`http://host:port` alone would let `base + link` name another host: a config error."""
    with pytest.raises(ValueError, match="must have a path"):
        SemaphoreSettings(semaphore_base_url="http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="invalid port"):
        CmsSettings(cms_base_url="http://127.0.0.1:99999/api")


def test_a_link_with_userinfo_syntax_never_sends_the_token_to_another_port(
    sandbox, bystander, token
) -> None:
    """`@127.0.0.1:P2/steal` joined to a path-less base once sent the token to port P2;
    joined as a URL it stays on the base's own host."""
    config = UpstreamConfig(
        service="semaphore",
        base_url=sandbox.base_url,  # no path: only reachable without the settings' check
        token=SemaphoreSettings(semaphore_api_token=token).semaphore_api_token,
        retry=ApiSettings(http_retry_attempts=1).retry_policy,
        read_timeout=1,
    )
    client = SemaphoreAPI(config)
    with pytest.raises(errors.UpstreamError):
        client.fetch(f"@127.0.0.1:{bystander.port}/steal")
    assert bystander.received == b""


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:{other}/api/v1alpha/pipelines?page=2",
        "//127.0.0.1:{other}/api/v1alpha/pipelines?page=2",
        "http://{token}@127.0.0.1:{port}/api/v1alpha/pipelines?page=2",
        "http://127.0.0.1:{port}@127.0.0.1:{other}/api/v1alpha/pipelines",
        "https://127.0.0.1:{port}/api/v1alpha/pipelines?page=2",
        "http://127.0.0.1:{port}/api/v1alpha/../../steal",
        "http://127.0.0.1:{port}/api/v1alpha/%2e%2e/steal",
        "http://127.0.0.1:{port}/steal",
        "http://[127.0.0.1:{port}/api/v1alpha/pipelines",
    ],
)
def test_an_off_host_or_off_path_link_is_refused_and_nobody_is_called(
    make_client, sandbox, bystander, token, link
) -> None:
    """A `Link: rel=next` to another host, port, scheme or path is InvalidResponse; the
    other port hears nothing, the sandbox no second request, and the error no token."""
    semaphore = make_client(SemaphoreAPI)
    project = semaphore.list_projects()[0]["metadata"]["id"]
    sandbox.reset()
    hostile = link.format(other=bystander.port, port=sandbox.port, token=token)
    sandbox.inject("pipelines", "next_link", link=hostile)
    with pytest.raises(errors.InvalidResponse, match="refusing to follow a link") as caught:
        semaphore.list_pipelines(project)
    assert sandbox.calls() == 1
    assert bystander.received == b""
    assert_clean(caught.value, token)


def test_pokeapi_next_off_host_is_refused(make_client, sandbox, bystander) -> None:
    """The JSON `next` of an index page is held to the same rule (no request forgery)."""
    sandbox.inject("pokemon_list", "next_link", link=f"http://127.0.0.1:{bystander.port}/x")
    with pytest.raises(errors.InvalidResponse, match="another host"):
        list(make_client(PokeAPI).iter_all_pokemon(page_size=10))
    assert bystander.received == b""


def test_a_relative_next_on_the_same_host_is_followed(make_client, sandbox) -> None:
    """A relative link below the base is joined as a URL and followed."""
    sandbox.inject("pokemon_list", "next_link", link="pokemon?offset=1345&limit=10")
    names = [entry["name"] for entry in make_client(PokeAPI).iter_all_pokemon(page_size=10)]
    assert len(names) == 10 + 6  # the first page, then the last six of 1351
    assert sandbox.calls("pokemon_list") == 2


# -- 2. one deadline for the whole exchange ----------------------------------------


@pytest.mark.parametrize(
    ("route", "kind", "params"),
    [
        ("pokemon", "slow_headers", {"interval": 0.8}),
        ("pokemon", "slow_chunks", {"interval": 0.8}),
        ("pokemon", "slow_drip", {"interval": 0.8, "encodings": "gzip, gzip"}),
        ("pokemon", "trailer_flood", {"seconds": 30}),
    ],
)
def test_no_trick_of_framing_holds_the_thread_past_the_deadline(
    make_client, sandbox, route, kind, params
) -> None:
    """Each byte arrives inside the read timeout, so only the whole-exchange deadline can
    stop it: UpstreamTimeout within the deadline + 1 s (a floor here, so a bound 3x)."""
    sandbox.inject(route, kind, **params)
    client = make_client(PokeAPI, http_connect_timeout=0.3, http_read_timeout=1)
    deadline = client.config.total_timeout  # 2.3 s
    started = time.monotonic()
    with pytest.raises(errors.UpstreamTimeout, match="not complete after"):
        client.get_pokemon("pikachu")
    assert time.monotonic() - started < deadline + 1
    assert sandbox.calls("pokemon") == 1


def test_the_client_still_works_after_the_watchdog_cut_a_connection(make_client, sandbox):
    """A cut connection is never handed to the next call."""
    client = make_client(PokeAPI, http_connect_timeout=0.3, http_read_timeout=0.5)
    sandbox.inject("pokemon", "slow_chunks", interval=0.4)
    with pytest.raises(errors.UpstreamTimeout):
        client.get_pokemon("pikachu")
    for _ in range(3):
        assert client.get_pokemon("pikachu").data["name"] == "pikachu"


# -- 3 and 4. bounded paging, bounded decoding ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [({"paging_max_pages": 5}, "PAGING_MAX_PAGES"), ({"paging_max_items": 450}, "_ITEMS")],
)
def test_endless_paging_stops_at_the_limit_naming_it(
    make_client, sandbox, overrides, setting
) -> None:
    """A `next` that never ends, a `total` that keeps growing, a `Link` for ever: each
    walk stops past its limit with PagingLimitExceeded naming the setting."""
    for route in ("pokemon_list", "articles", "pipelines"):
        sandbox.inject(route, "endless_paging", times=None)
    pokeapi = make_client(PokeAPI, **overrides)
    cms = make_client(CmsAPI, **overrides)
    semaphore = make_client(SemaphoreAPI, **overrides)
    walks = {
        "pokemon_list": lambda: list(pokeapi.iter_all_pokemon(page_size=100)),
        "articles": lambda: cms.get_all_articles(page_size=100),
        "pipelines": lambda: semaphore.list_pipelines("any-project"),
    }
    for route, walk in walks.items():
        with pytest.raises(errors.PagingLimitExceeded, match=setting):
            walk()
        assert sandbox.calls(route) <= 16, route


def test_deflate_padding_stops_at_the_cap_of_compressed_bytes(make_client, sandbox) -> None:
    """Empty deflate blocks inflate to nothing for ever: the raw bytes count, so it ends
    at the record's cap (1 MiB) instead of the deadline."""
    sandbox.inject("pokemon", "deflate_padding")
    client = make_client(PokeAPI, http_read_timeout=5)
    started = time.monotonic()
    with pytest.raises(errors.ResponseTooLarge, match="exceeds the cap of 1048576"):
        client.get_pokemon("pikachu")
    assert time.monotonic() - started < client.config.total_timeout


def test_a_valid_stacked_encoding_decodes_and_an_unknown_one_is_refused(
    make_client, sandbox
) -> None:
    """`gzip, gzip` is decoded stage by stage; `br` (never asked for) and three stacked
    codings are refused as InvalidResponse, after one call each."""
    client = make_client(PokeAPI)
    sandbox.inject("pokemon", "encoding", encodings="gzip, gzip")
    assert client.get_pokemon("pikachu").data["name"] == "pikachu"
    for encodings, match in (
        ("br", "unsupported Content-Encoding 'br'"),
        ("gzip, gzip, gzip", "at most 2"),
    ):
        sandbox.inject("pokemon", "encoding", encodings=encodings)
        with pytest.raises(errors.InvalidResponse, match=match):
            client.get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 3


# -- 5. typed parse errors -----------------------------------------------------------


def test_deep_json_is_invalid_response(make_client, sandbox) -> None:
    """100,000 nested arrays: msgspec's RecursionError and orjson's depth limit are both
    InvalidResponse."""
    sandbox.inject("pokemon", "deep_json")
    sandbox.inject("pokemon_list", "deep_json")
    client = make_client(PokeAPI)
    with pytest.raises(errors.InvalidResponse, match="nested too deeply"):
        client.get_pokemon("pikachu")
    with pytest.raises(errors.InvalidResponse, match="unusable JSON"):
        client.list_pokemon()


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("http://[evil.example/x", "an unparsable Location"),
        ("http://ev\x1bil\x85.example/", r"ev\x1bil\x85"),
    ],
)
def test_a_hostile_location_is_typed_and_its_controls_escaped(
    make_client, sandbox, location, shown
) -> None:
    """A `[` makes urlsplit raise ValueError; ESC and NEL would rewrite a terminal."""
    sandbox.inject("pokemon", "redirect", location=location)
    with pytest.raises(errors.UnexpectedRedirect) as caught:
        make_client(PokeAPI).get_pokemon("pikachu")
    assert shown in caught.value.message
    assert not any(c in str(caught.value) for c in "\x1b\x85\x0b\x0c")


def test_a_header_flood_is_permanent_after_one_call(make_client, sandbox) -> None:
    """More header lines than http.client takes is a protocol violation, not an outage:
    one call, not the 16 of the transient worst case."""
    sandbox.inject("pokemon", "header_flood", times=None)
    with pytest.raises(errors.ProtocolViolation, match="more than 100 headers"):
        make_client(PokeAPI, http_retry_attempts=4).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


# -- 6. secrets ------------------------------------------------------------------------


def test_a_token_in_a_link_is_masked_in_every_channel_of_the_error(
    make_client, sandbox, token
) -> None:
    """`http://TOKEN@evil/x` once put the raw token in the message Celery stores."""
    semaphore = make_client(SemaphoreAPI)
    sandbox.inject("projects", "next_link", link=f"http://{token}@evil.example/x")
    with pytest.raises(errors.InvalidResponse) as caught:
        semaphore.list_projects()
    assert_clean(caught.value, token)


def test_an_error_status_keeps_its_meaning_under_an_unknown_encoding(make_client, sandbox):
    """A 503 labelled `Content-Encoding: br` is still a 503 (transient, retried), not an
    unusable body."""
    sandbox.inject("pokemon", "encoding", encodings="br", status=503)
    assert make_client(PokeAPI, http_retry_attempts=2).get_pokemon("pikachu").data["id"] == 25
    assert sandbox.calls("pokemon") == 2
