"""The API layer's own defences, piece by piece: links, decoding stages, excerpts, errors."""

from __future__ import annotations

import gzip
import pickle
import tracemalloc
import uuid
import zlib

import pytest

from apis import errors
from apis.client import ApiClient
from apis.config import UpstreamConfig
from apis.inflate import Decoding, OverCap, UnsupportedEncoding
from apis.paging import PageBudget
from apis.pokeapi import decode_record_fields
from sandbox.faults import DEFLATE_HEADER, EMPTY_DEFLATE_BLOCK
from telemetry.redact import MASK, clean, excerpt, register_secret


def client(base_url: str = "https://api.example.com/api/v2") -> ApiClient:
    return ApiClient(UpstreamConfig(service="test", base_url=base_url))


@pytest.fixture
def secret() -> str:
    value = f"tok_{uuid.uuid4().hex}"
    register_secret(value)
    return value


# -- links ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("https://api.example.com/api/v2/pokemon?offset=20", None),
        ("https://API.example.com:443/api/v2/pokemon", None),
        ("/api/v2/pokemon?offset=20", "https://api.example.com/api/v2/pokemon?offset=20"),
        ("pokemon?offset=20", "https://api.example.com/api/v2/pokemon?offset=20"),
    ],
)
def test_links_below_the_base_are_followed(link: str, expected: str | None) -> None:
    """Absolute, rooted or relative, a link under the base path is joined as a URL."""
    assert client().follow(link) == (expected or link)


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/api/v2/pokemon",
        "http://api.example.com/api/v2/pokemon",
        "https://api.example.com:8443/api/v2/pokemon",
        "https://user:pw@api.example.com/api/v2/pokemon",
        "https://api.example.com@evil.example/api/v2/pokemon",
        "//evil.example/api/v2/pokemon",
        "https://api.example.com/api/v20/pokemon",
        "https://api.example.com/api/v2/../admin",
        "https://api.example.com/api/v2/%2E%2E/admin",
        "https://api.example.com/api/v2/..%2f..%2fadmin",
        "https://api.example.com/api/v2/..%5c..%5cadmin",
        "https://api.example.com/api/v2/pokemon\\..\\admin",
        "https://api.example.com/api/v2/a b",
        "https://api.example.com/api/v2/\x1b[2J",
        "https://[api.example.com/api/v2/pokemon",
        "https://api.example.com:99999/api/v2/pokemon",
        "file:///etc/passwd",
    ],
)
def test_links_elsewhere_are_refused_typed(link: str) -> None:
    """Another host, port or scheme, userinfo, dot segments, a path beside the base,
    or a URL urlsplit cannot parse: InvalidResponse, never ValueError."""
    with pytest.raises(errors.InvalidResponse, match="refusing to follow a link"):
        client().follow(link)


@pytest.mark.parametrize("link", [5, None, ["/api/v2/x"], {"url": "/api/v2/x"}, True])
def test_a_link_that_is_not_a_string_is_invalid_response(link: object) -> None:
    """A JSON `next` of 5 raised TypeError deep in the client."""
    with pytest.raises(errors.InvalidResponse, match="expected a URL string"):
        client().follow(link)


def test_a_path_less_base_still_keeps_links_on_its_host() -> None:
    """Built by hand (settings refuse it), a path-less base joins `@other:1/x` as a path."""
    base = client("http://127.0.0.1:8000")
    assert base.follow("@127.0.0.1:9000/steal") == "http://127.0.0.1:8000/@127.0.0.1:9000/steal"


# -- decoding stages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bomb", "stage"),
    [
        (gzip.compress(gzip.compress(b"\0" * 50_000_000)), 2),
        (gzip.compress(b"\0" * 50_000_000), 1),  # labelled `gzip, gzip`, bombs at once
    ],
)
def test_a_stacked_bomb_stops_at_the_cap_of_the_stage_that_passes_it(
    bomb: bytes, stage: int
) -> None:
    """Each stage counts what it passes on, so no stage ever holds more than the cap."""
    decoding = Decoding.for_header("gzip, gzip", 1_000_000)
    with pytest.raises(OverCap, match=f"decoding stage {stage} exceeds the cap"):
        decoding.feed(bomb)


def test_empty_deflate_blocks_count_as_compressed_bytes() -> None:
    """A stream that inflates to nothing ends at the cap of raw bytes, its retry buffer
    bounded (it kept every byte until the first output: +131 MB)."""
    decoding = Decoding.for_header("deflate", 1_000_000)
    batch = EMPTY_DEFLATE_BLOCK * 13_000  # 65 KB a read

    def feed_until_refused() -> None:
        assert decoding.feed(DEFLATE_HEADER) == b""
        for _ in range(100):  # 6.5 MB
            assert decoding.feed(batch) == b""

    tracemalloc.start()
    try:
        with pytest.raises(OverCap, match="body exceeds the cap"):
            feed_until_refused()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize(
    ("header", "match"),
    [("br", "'br'"), ("gzip, zstd", "'zstd'"), ("gzip, gzip, gzip", "at most 2")],
)
def test_unknown_or_deep_encodings_are_refused(header: str, match: str) -> None:
    with pytest.raises(UnsupportedEncoding, match=match):
        Decoding.for_header(header, 1000)


def test_stacked_codings_are_undone_in_reverse_order() -> None:
    """`deflate, gzip` was deflated, then gzipped: gunzip first."""
    body = b'{"ok": true}'
    decoding = Decoding.for_header("deflate, gzip, identity", 1000)
    assert decoding.feed(gzip.compress(zlib.compress(body))) + decoding.flush() == body


# -- records and pages ------------------------------------------------------------------


def test_a_record_of_the_wrong_shape_is_refused_without_a_second_decode() -> None:
    """`[{}, {}, ...]`: 387 MB peak for 10 MB once decoded whole; now refused at byte 0."""
    body = b"[" + b"{}," * 1_000_000 + b"{}]"
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="not a pokemon record"):
            decode_record_fields(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(body)


def test_the_page_budget_names_the_limit_it_passed() -> None:
    config = UpstreamConfig(service="test", base_url="http://x/api", max_pages=2, max_items=5)
    budget = PageBudget(config, "test", "/things")
    budget.take(2)
    budget.take(2)
    with pytest.raises(errors.PagingLimitExceeded, match=r"more than 2 pages \(PAGING_MAX_PAGES"):
        budget.take(0)
    items = PageBudget(config, "test", "/things")
    with pytest.raises(errors.PagingLimitExceeded, match="PAGING_MAX_ITEMS"):
        items.take(6)


# -- excerpts and errors ---------------------------------------------------------------


@pytest.mark.parametrize("padding", [770, 780, 790, 800, 1000])
def test_a_padded_echo_never_shows_part_of_a_token(secret: str, padding: int) -> None:
    """Spaces squeeze to one after the cut: a token cut at the window's edge once
    reached the excerpt in part."""
    body = (" " * padding + secret + " tail").encode()
    text = excerpt(body)
    assert secret[:10] not in text


def test_upstream_error_cleans_its_own_arguments(secret: str) -> None:
    """Masked and escaped in `args` themselves: what Celery stores as exc_message, what a
    span records, what pickle carries."""
    exc = errors.InvalidResponse(
        f"link to {secret}@evil\x1b[2J\x85x", "svc", "GET", f"/p/{secret}", 200, f"{secret}\x0b"
    )
    for text in (str(exc), repr(exc), repr(exc.args), repr(pickle.loads(pickle.dumps(exc)).args)):
        assert secret not in text
        assert not any(c in text for c in "\x1b\x85\x0b")
    assert exc.message == f"link to {MASK}@evil\\x1b[2J\\x85x"
    assert pickle.loads(pickle.dumps(exc)).message == exc.message  # cleaning is idempotent


def test_clean_keeps_tabs_and_text() -> None:
    assert clean("a\tb é ✓") == "a\tb é ✓"
    assert clean("a\nb\rc\u2028") == "a\\x0ab\\x0dc\\u2028"
