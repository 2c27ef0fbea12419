"""HTTPS upstreams: certificates are verified against certifi's bundle, as requests does.

A throwaway certificate authority (trustme) signs a certificate for 127.0.0.1, and a
small HTTPS server on loopback serves one Pokémon record with it.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import certifi
import orjson
import pytest
import trustme

from apis import PokeAPI, errors
from apis.config import ApiSettings
from tests.support.redis_server import free_port

RECORD = orjson.dumps(
    {"id": 25, "name": "pikachu", "height": 4, "weight": 60, "sprites": {"front_default": None}}
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(RECORD)))
        self.end_headers()
        self.wfile.write(RECORD)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_url(authority: trustme.CA) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api/v2"
    finally:
        server.shutdown()
        server.server_close()


def client(url: str) -> PokeAPI:
    settings = ApiSettings(pokeapi_base_url=url, http_retry_attempts=1, http_read_timeout=5)
    return PokeAPI(PokeAPI.configure(settings))


def test_a_certificate_from_an_unknown_authority_is_refused(https_url: str) -> None:
    """No request is answered over a connection whose certificate is not trusted."""
    with pytest.raises(errors.UpstreamConnectionError) as refused:
        client(https_url).get_pokemon("pikachu")
    assert "SSLError" in refused.value.message


def test_a_trusted_certificate_serves_the_record(
    https_url: str, authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the authority in the bundle the client verifies against, the call succeeds."""
    bundle = tmp_path / "bundle.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    assert client(https_url).get_pokemon("pikachu").data["id"] == 25


def test_a_refused_connection_names_the_host_and_port_never_the_credentials() -> None:
    """Nothing listens on the port: the error says which address, without the userinfo
    the base URL carries."""
    port = free_port()
    with pytest.raises(errors.UpstreamConnectionError) as refused:
        client(f"http://someone:url-secret@127.0.0.1:{port}/api/v2").get_pokemon("pikachu")
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert "url-secret" not in str(refused.value)
    assert "url-secret" not in repr(refused.value)
