"""The sandbox's hostile faults, as a plain HTTP client sees them on the wire."""

from __future__ import annotations

import gzip
import json
import socket
import zlib

import requests

from sandbox import SandboxServer


def raw_get(sandbox: SandboxServer, path: str, *, limit: int = 1 << 20) -> bytes:
    """Up to `limit` bytes of the answer to a GET, however it is framed."""
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while len(received) < limit and (data := sock.recv(65536)):
            received += data
    return received


def test_header_flood_sends_count_header_lines(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon", "header_flood", count=150)
    head = raw_get(sandbox, "/api/v2/pokemon/1").split(b"\r\n\r\n")[0]
    assert head.count(b"X-Flood-") == 150


def test_stacked_encoding_is_applied_in_order_and_labelled(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon", "encoding", encodings="deflate, gzip")
    response = requests.get(f"{sandbox.pokeapi_url}/pokemon/1", stream=True, timeout=5)
    assert response.headers["Content-Encoding"] == "deflate, gzip"
    body = zlib.decompress(gzip.decompress(response.raw.read(decode_content=False)))
    assert json.loads(body)["name"] == "bulbasaur"


def test_deflate_padding_inflates_to_nothing(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon", "deflate_padding", size=200_000)
    head, _, body = raw_get(sandbox, "/api/v2/pokemon/1").partition(b"\r\n\r\n")
    assert b"Content-Encoding: deflate" in head
    assert b"Content-Length" not in head
    assert len(body) >= 190_000
    assert zlib.decompressobj().decompress(body) == b""


def test_next_link_points_next_and_link_at_the_given_url(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon_list", "next_link", link="http://evil.example/x")
    response = requests.get(f"{sandbox.pokeapi_url}/pokemon", timeout=5)
    assert response.json()["next"] == "http://evil.example/x"
    assert response.links["next"]["url"] == "http://evil.example/x"


def test_endless_paging_always_has_a_next_page(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon_list", "endless_paging", times=None)
    url = f"{sandbox.pokeapi_url}/pokemon?limit=5"
    for _ in range(3):
        page = requests.get(url, timeout=5).json()
        assert len(page["results"]) == 5
        assert page["count"] > len(page["results"])
        url = page["next"]
    assert url.endswith("offset=15&limit=5")


def test_deep_json_nests_depth_arrays(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon", "deep_json", depth=50)
    body = requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5).content
    assert body == b'{"x":' + b"[" * 50 + b"]" * 50 + b"}"


def test_slow_chunks_never_finishes_its_chunk_size_line(sandbox: SandboxServer) -> None:
    sandbox.inject("pokemon", "slow_chunks", interval=0.05)
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock.sendall(b"GET /api/v2/pokemon/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while len(answer.partition(b"\r\n\r\n")[2]) < 5:
            answer += sock.recv(100)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert set(body) <= {ord("0")}
