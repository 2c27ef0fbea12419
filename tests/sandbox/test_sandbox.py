"""The sandbox upstream, exercised over real HTTP the way the worker's clients use it."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sandbox import KINDS, ROUTES, SandboxServer

TOKEN = {"Authorization": "Token sandbox-token"}
IDENTITY = {"Accept-Encoding": "identity"}
ROOT = Path(__file__).resolve().parents[2]


def _project_id(sandbox: SandboxServer, index: int) -> str:
    projects = requests.get(f"{sandbox.semaphore_url}/projects", headers=TOKEN, timeout=5).json()
    return str(projects[index]["metadata"]["id"])


# -- PokeAPI -------------------------------------------------------------------------


def test_charizard_is_the_real_record_with_absolute_urls_and_gzip(sandbox):
    """Charizard is served from the real record, gzipped on request, with absolute URLs."""
    response = requests.get(
        f"{sandbox.pokeapi_url}/pokemon/charizard", headers={"Accept-Encoding": "gzip"}, timeout=5
    )
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["ETag"]
    assert response.headers["Last-Modified"]
    record = response.json()
    assert (record["id"], record["name"], record["height"], record["weight"]) == (
        6,
        "charizard",
        17,
        905,
    )
    assert record["species"]["url"] == f"{sandbox.pokeapi_url}/pokemon-species/6/"
    assert record["location_area_encounters"] == f"{sandbox.pokeapi_url}/pokemon/6/encounters"
    assert '"/api/v2/' not in response.text

    plain = requests.get(f"{sandbox.pokeapi_url}/pokemon/6/", headers=IDENTITY, timeout=5)
    assert "Content-Encoding" not in plain.headers
    assert int(plain.headers["Content-Length"]) == len(plain.content) > 300_000
    assert plain.content == response.content
    # The bytes on the wire, undecoded: a real gzip stream of the plain body, and smaller.
    with requests.get(
        f"{sandbox.pokeapi_url}/pokemon/6", headers={"Accept-Encoding": "gzip"}, stream=True
    ) as raw:
        wire = raw.raw.read(decode_content=False)
    assert int(raw.headers["Content-Length"]) == len(wire) < len(plain.content) / 4
    assert gzip.decompress(wire) == plain.content


def test_matching_etag_gets_304(sandbox):
    """A matching If-None-Match is answered 304 without a body."""
    first = requests.get(f"{sandbox.pokeapi_url}/pokemon/25", timeout=5)
    again = requests.get(
        f"{sandbox.pokeapi_url}/pokemon/25",
        headers={"If-None-Match": first.headers["ETag"]},
        timeout=5,
    )
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize(
    "path",
    ["/api/v2/pokemon/25", "/api/v2/pokemon/ivysaur", "/api/v1/article/hello-world",
     "/api/v1/articles?limit=100", "/api/v2/pokemon?limit=5"],
)  # fmt: skip
def test_every_record_has_a_stable_etag_and_last_modified_and_answers_304(sandbox, path):
    """Both validators are sent, equal on every request, and each alone earns a 304."""
    first = requests.get(sandbox.base_url + path, timeout=5)
    second = requests.get(sandbox.base_url + path, timeout=5)
    assert first.headers["ETag"] == second.headers["ETag"]
    by_etag = requests.get(
        sandbox.base_url + path, headers={"If-None-Match": first.headers["ETag"]}, timeout=5
    )
    assert (by_etag.status_code, by_etag.content) == (304, b"")
    assert by_etag.headers["ETag"] == first.headers["ETag"]
    if "Last-Modified" in first.headers:  # the index pages have no modification date
        assert first.headers["Last-Modified"] == second.headers["Last-Modified"]
        by_date = requests.get(
            sandbox.base_url + path,
            headers={"If-Modified-Since": first.headers["Last-Modified"]},
            timeout=5,
        )
        assert by_date.status_code == 304
    assert path.startswith("/api/v2/pokemon?") or "Last-Modified" in first.headers


def test_if_none_match_is_weak_and_wins_over_if_modified_since(sandbox):
    """W/"x" matches "x"; a stale ETag gets 200 even with a matching date (RFC 9110)."""
    url = f"{sandbox.pokeapi_url}/pokemon/25"
    first = requests.get(url, timeout=5)
    weak = requests.get(url, headers={"If-None-Match": "W/" + first.headers["ETag"]}, timeout=5)
    assert weak.status_code == 304
    stale = requests.get(
        url,
        headers={
            "If-None-Match": '"not-the-current-one"',
            "If-Modified-Since": first.headers["Last-Modified"],
        },
        timeout=5,
    )
    assert stale.status_code == 200
    earlier = requests.get(
        url, headers={"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}, timeout=5
    )
    assert earlier.status_code == 200


def test_a_changed_record_gets_new_validators_and_a_new_body(sandbox):
    """The admin API edits a record: the old ETag gets 200 with the new body and ETag."""
    url = f"{sandbox.pokeapi_url}/pokemon/pikachu"
    before = requests.get(url, timeout=5)
    changed = requests.post(f"{sandbox.base_url}/_sandbox/records/pokemon/pikachu", timeout=5)
    assert changed.status_code == 200
    after = requests.get(url, headers={"If-None-Match": before.headers["ETag"]}, timeout=5)
    assert after.status_code == 200
    assert after.headers["ETag"] == changed.json()["etag"] != before.headers["ETag"]
    assert after.headers["Last-Modified"] != before.headers["Last-Modified"]
    assert after.json()["weight"] == before.json()["weight"] + 1
    article = f"{sandbox.cms_url}/article/hello-world"
    old = requests.get(article, timeout=5)
    sandbox.change_record("article", "hello-world")
    new = requests.get(article, headers={"If-None-Match": old.headers["ETag"]}, timeout=5)
    assert new.status_code == 200
    assert new.json()["title"] == "Hello, world (revision 1)"
    missing = requests.post(f"{sandbox.base_url}/_sandbox/records/pokemon/missingno", timeout=5)
    assert missing.status_code == 404
    other = requests.post(f"{sandbox.base_url}/_sandbox/records/projects/x", timeout=5)
    assert other.status_code == 400


def test_admin_counts_conditional_requests_304s_and_bytes_sent(sandbox):
    """What revalidation saves is visible: 304s counted, their bodies cost no bytes."""
    url = f"{sandbox.pokeapi_url}/pokemon/charizard"
    first = requests.get(url, timeout=5)
    requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=5)
    counted = requests.get(f"{sandbox.base_url}/_sandbox/requests", timeout=5).json()
    assert counted["counts"] == {"pokemon": 2}
    assert counted["conditional"] == {"pokemon": 1}
    assert counted["not_modified"] == 1
    assert counted["bytes_sent"] == int(first.headers["Content-Length"]) > 5_000
    assert sandbox.not_modified("pokemon") == 1


@pytest.mark.parametrize("key", ["missingno", "Charizard", "99999", "0"])
def test_unknown_pokemon_is_404_not_found(sandbox, key):
    """Unknown names and ids (lookup is exact and lower-case) get the live API's 404."""
    response = requests.get(f"{sandbox.pokeapi_url}/pokemon/{key}", timeout=5)
    assert response.status_code == 404
    assert response.text == "Not Found"


def test_index_pages_walk_the_whole_list(sandbox):
    """The index pages through all 1351 entries with absolute next/previous links."""
    url: str | None = f"{sandbox.pokeapi_url}/pokemon?limit=500"
    pages = []
    while url is not None:
        page = requests.get(url, timeout=5).json()
        pages.append(page)
        url = page["next"]
    assert [len(page["results"]) for page in pages] == [500, 500, 351]
    assert {page["count"] for page in pages} == {1351}
    assert pages[0]["previous"] is None
    assert pages[1]["previous"] == f"{sandbox.pokeapi_url}/pokemon?offset=0&limit=500"
    assert pages[0]["next"] == f"{sandbox.pokeapi_url}/pokemon?offset=500&limit=500"
    names = [entry["name"] for page in pages for entry in page["results"]]
    assert len(set(names)) == 1351
    assert pages[0]["results"][5] == {
        "name": "charizard",
        "url": f"{sandbox.pokeapi_url}/pokemon/6/",
    }
    default = requests.get(f"{sandbox.pokeapi_url}/pokemon/", timeout=5).json()
    assert len(default["results"]) == 20


def test_synthetic_pokemon_is_realistic_and_stable(sandbox):
    """A name without a real record gets a full-size synthetic record, the same every time."""
    by_name = requests.get(f"{sandbox.pokeapi_url}/pokemon/pikachu-rock-star", timeout=5)
    by_id = requests.get(f"{sandbox.pokeapi_url}/pokemon/10080/", timeout=5)
    assert by_name.status_code == 200
    assert by_name.content == by_id.content
    assert len(by_name.content) > 10_000
    record = by_name.json()
    assert (record["id"], record["name"]) == (10080, "pikachu-rock-star")
    assert record["sprites"]["front_default"] == (
        "https://raw.githubusercontent.com/PokeAPI/sprites/master/sprites/pokemon/10080.png"
    )
    assert isinstance(record["height"], int)
    assert isinstance(record["weight"], int)
    assert record["forms"][0]["url"] == f"{sandbox.pokeapi_url}/pokemon-form/10080/"


# -- CMS -----------------------------------------------------------------------------


def test_cms_article_and_pages(sandbox):
    """Articles are served by slug and paged with entities/total; unknown slugs are 404."""
    article = requests.get(f"{sandbox.cms_url}/article/hello-world", timeout=5).json()
    assert set(article) == {
        "id",
        "slug",
        "title",
        "author",
        "body",
        "tags",
        "published_at",
        "updated_at",
    }
    assert article["slug"] == "hello-world"
    missing = requests.get(f"{sandbox.cms_url}/article/no-such-article", timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"error": "not found"})

    slugs: list[str] = []
    offset = 0
    while True:
        page = requests.get(f"{sandbox.cms_url}/articles", params={"offset": offset}, timeout=5)
        entities = page.json()["entities"]
        if not entities:
            break
        assert len(entities) <= 10
        slugs += [entity["slug"] for entity in entities]
        offset += len(entities)
    assert page.json()["total"] == len(slugs) == 44
    assert slugs[0] == "article-01"
    assert "hello-world" in slugs
    capped = requests.get(f"{sandbox.cms_url}/articles?limit=1000", timeout=5).json()
    assert len(capped["entities"]) == 44
    bad = requests.get(f"{sandbox.cms_url}/articles?limit=ten", timeout=5)
    assert bad.status_code == 400


# -- Semaphore -----------------------------------------------------------------------


def test_semaphore_requires_the_token(sandbox):
    """Semaphore routes answer 401 without the right `Authorization: Token` header."""
    for headers in (
        {},
        {"Authorization": "Token wrong"},
        {"Authorization": "Bearer sandbox-token"},
    ):
        response = requests.get(f"{sandbox.semaphore_url}/projects", headers=headers, timeout=5)
        assert (response.status_code, response.json()) == (401, {"message": "Unauthorized"})


def test_semaphore_pipelines_page_through_the_link_header(sandbox):
    """Project 1's 75 pipelines come in 3 pages linked by next/prev/first."""
    project_id = _project_id(sandbox, 0)
    url: str | None = f"{sandbox.semaphore_url}/pipelines?project_id={project_id}"
    pages = []
    while url is not None:
        response = requests.get(url, headers=TOKEN, timeout=5)
        assert response.status_code == 200
        pages.append(response)
        url = response.links.get("next", {}).get("url")
    assert [len(page.json()) for page in pages] == [30, 30, 15]
    first_url = f"{sandbox.semaphore_url}/pipelines?project_id={project_id}&page=1"
    assert all(page.links["first"]["url"] == first_url for page in pages)
    assert "prev" not in pages[0].links
    assert pages[2].links["prev"]["url"].endswith("&page=2")
    assert pages[2].headers["x-total-count"] == "75"
    pipelines = [item for page in pages for item in page.json()]
    assert len({item["ppl_id"] for item in pipelines}) == 75
    assert {item["state"] for item in pipelines} == {"DONE", "RUNNING"}
    assert {item["project_id"] for item in pipelines} == {project_id}


def test_semaphore_other_projects_and_errors(sandbox):
    """Project sizes, the pipeline detail route, and 400/404 errors."""
    base = sandbox.semaphore_url
    second = requests.get(
        f"{base}/pipelines", params={"project_id": _project_id(sandbox, 1)}, headers=TOKEN
    )
    assert len(second.json()) == 30
    assert "next" not in second.links
    third = requests.get(
        f"{base}/pipelines", params={"project_id": _project_id(sandbox, 2)}, headers=TOKEN
    )
    assert third.json() == []
    assert requests.get(f"{base}/pipelines", headers=TOKEN).status_code == 400
    unknown = requests.get(f"{base}/pipelines", params={"project_id": "nope"}, headers=TOKEN)
    assert unknown.status_code == 404

    ppl_id = second.json()[0]["ppl_id"]
    detail = requests.get(f"{base}/pipelines/{ppl_id}", headers=TOKEN).json()
    assert detail == {"pipeline": second.json()[0], "blocks": []}
    assert requests.get(f"{base}/pipelines/nope", headers=TOKEN).status_code == 404


def test_unknown_route_is_404(sandbox):
    """Paths outside the three APIs are 404 and counted as `unknown`."""
    assert requests.get(f"{sandbox.base_url}/api/v2/berry/1", timeout=5).status_code == 404
    assert sandbox.call_counts() == {"unknown": 1}


# -- faults --------------------------------------------------------------------------


def test_status_fault_applies_n_times_then_clears(sandbox):
    """A status fault answers the next `times` requests, then normal service resumes."""
    sandbox.inject("pokemon", "status", status=503, times=2)
    url = f"{sandbox.pokeapi_url}/pokemon/1"
    codes = [requests.get(url, timeout=5).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert sandbox.calls("pokemon") == 3


def test_faults_on_a_route_are_consumed_in_order(sandbox):
    """Several queued faults on one route apply one after another."""
    sandbox.inject("article", "status", status=500)
    sandbox.inject("article", "unauthorized")
    url = f"{sandbox.cms_url}/article/hello-world"
    assert [requests.get(url, timeout=5).status_code for _ in range(3)] == [500, 401, 200]


def test_rate_limited_fault_sends_retry_after(sandbox):
    """rate_limited answers 429 with the requested Retry-After."""
    sandbox.inject("projects", "rate_limited", retry_after=7)
    response = requests.get(f"{sandbox.semaphore_url}/projects", headers=TOKEN, timeout=5)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_reset_fault_aborts_the_connection(sandbox):
    """reset drops the connection with an RST, which requests reports as ConnectionError."""
    sandbox.inject("pokemon", "reset")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5)
    assert requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5).status_code == 200


def test_hang_fault_outlasts_the_read_timeout(sandbox):
    """hang sends nothing, so the client's read timeout fires; other requests still flow."""
    sandbox.inject("pokemon", "hang", seconds=5.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=(2, 0.2))
    # Served while the hung handler still waits out its 5 s.
    assert requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5).status_code == 200
    assert sandbox.calls("pokemon") == 2


def test_truncated_fault_breaks_the_body(sandbox):
    """truncated promises the full Content-Length but sends half, which requests rejects."""
    sandbox.inject("pokemon", "truncated")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(f"{sandbox.pokeapi_url}/pokemon/1", headers=IDENTITY, timeout=5)


def test_redirect_fault_points_elsewhere(sandbox):
    """redirect answers 302 to another host."""
    sandbox.inject("article", "redirect")
    response = requests.get(
        f"{sandbox.cms_url}/article/hello-world", allow_redirects=False, timeout=5
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "http://example.invalid/elsewhere"


def test_huge_fault_sends_the_requested_size_of_valid_json(sandbox):
    """huge streams a valid JSON body of exactly `size` bytes."""
    sandbox.inject("pokemon", "huge", size=3_000_001)
    response = requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) == 3_000_001
    assert set(json.loads(response.content)) == {"padding"}


def test_slow_drip_fault_sends_one_byte_per_interval(sandbox):
    """slow_drip promises the full body but sends it a byte at a time."""
    expected = requests.get(f"{sandbox.pokeapi_url}/pokemon/1", headers=IDENTITY, timeout=5)
    sandbox.inject("pokemon", "slow_drip", interval=0.05)
    started = time.monotonic()
    with requests.get(
        f"{sandbox.pokeapi_url}/pokemon/1", headers=IDENTITY, stream=True, timeout=5
    ) as response:
        assert int(response.headers["Content-Length"]) == len(expected.content)
        first = response.raw.read(4)
    assert first == expected.content[:4]
    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("malformed_json", 200, lambda r: r.text == '{"id": 6, "name": '),
        ("wrong_content_type", 200, lambda r: r.headers["Content-Type"].startswith("text/html")),
        ("wrong_shape", 200, lambda r: r.json() == [1, 2, 3]),
        ("unauthorized", 401, lambda r: r.json() == {"message": "Unauthorized"}),
    ],
)
def test_response_faults(sandbox, kind, status, check):
    """The faults that are just a different answer are served once, then normal service."""
    sandbox.inject("pokemon_list", kind)
    response = requests.get(f"{sandbox.pokeapi_url}/pokemon", timeout=5)
    assert response.status_code == status
    assert check(response)
    assert "results" in requests.get(f"{sandbox.pokeapi_url}/pokemon", timeout=5).json()


def test_latency_fault_and_global_latency_do_not_block_other_requests(sandbox):
    """Latency delays responses in parallel, never serialising them."""
    sandbox.inject("pokemon", "latency", seconds=0.3)
    started = time.monotonic()
    assert requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3

    # Eight requests at once with 1 s of latency each: all eight arrive (the server's own
    # arrival times) before the first answer is back, so none waited for another.
    sandbox.reset()
    sandbox.latency = 1.0

    def get(n: int) -> tuple[int, float]:
        code = requests.get(f"{sandbox.pokeapi_url}/pokemon/{n}", timeout=5).status_code
        return code, time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(get, range(1, 9)))
    assert [code for code, _ in answers] == [200] * 8
    arrivals = sandbox.call_times("pokemon")
    assert len(arrivals) == 8
    assert max(arrivals) < min(done for _, done in answers)


def test_probability_faults_are_random_and_unbounded(sandbox):
    """probability=1 faults every request until cleared; probability=0 never fires."""
    sandbox.inject("article", "status", status=502, probability=0.0)
    sandbox.inject("article", "status", status=503, probability=1.0)
    url = f"{sandbox.cms_url}/article/hello-world"
    assert [requests.get(url, timeout=5).status_code for _ in range(3)] == [503] * 3
    sandbox.clear_faults()
    assert requests.get(url, timeout=5).status_code == 200


def test_inject_rejects_unknown_route_kind_and_parameter(sandbox):
    """inject raises ValueError for anything it cannot honour."""
    with pytest.raises(ValueError, match="route"):
        sandbox.inject("nope", "status")
    with pytest.raises(ValueError, match="kind"):
        sandbox.inject("pokemon", "explode")
    with pytest.raises(ValueError, match="seconds"):
        sandbox.inject("pokemon", "status", seconds=3)
    # And every route and kind the sandbox names is one it accepts.
    for route in ROUTES:
        for kind in KINDS:
            sandbox.inject(route, kind)
    assert sum(len(kinds) for kinds in sandbox.pending_faults().values()) == len(ROUTES) * len(
        KINDS
    )


# -- request log and admin endpoint -----------------------------------------------


def test_requests_are_counted_on_arrival(sandbox):
    """Every request is counted per route with its arrival time, faulted ones included."""
    sandbox.inject("pokemon", "reset")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sandbox.pokeapi_url}/pokemon/4", timeout=5)
    requests.get(f"{sandbox.pokeapi_url}/pokemon/4", timeout=5)
    requests.get(f"{sandbox.semaphore_url}/projects", timeout=5)
    assert sandbox.call_counts() == {"pokemon": 2, "projects": 1}
    assert sandbox.calls() == 3
    assert sandbox.calls("pokemon") == 2
    assert sandbox.calls("article") == 0
    first, second = sandbox.call_times("pokemon")
    assert first <= second <= time.monotonic()
    sandbox.reset()
    assert sandbox.calls() == 0


def test_requests_are_logged_per_path_with_the_headers_received(sandbox):
    """Calls per path (a trailing slash counts as the same path) and the headers read."""
    sandbox.inject("pokemon", "status", status=503)
    for name in ("mew", "mew/", "ditto"):
        requests.get(f"{sandbox.pokeapi_url}/pokemon/{name}", headers={"X-Probe": name})
    assert sandbox.calls_by_path("pokemon") == {
        "/api/v2/pokemon/mew": 2,
        "/api/v2/pokemon/ditto": 1,
    }
    assert [seen.headers["x-probe"] for seen in sandbox.received("pokemon")] == [
        "mew",
        "mew/",
        "ditto",
    ]
    sandbox.reset()
    assert sandbox.calls_by_path("pokemon") == {}
    assert sandbox.received() == []


def test_admin_endpoint_controls_the_server(sandbox):
    """/_sandbox injects and clears faults, reports counts, sets latency and resets."""
    admin = f"{sandbox.base_url}/_sandbox"
    created = requests.post(
        f"{admin}/faults", json={"route": "pokemon", "kind": "status", "status": 504, "times": 1}
    )
    assert created.status_code == 201
    assert requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5).status_code == 504
    counted = requests.get(f"{admin}/requests").json()
    assert (counted["counts"], counted["total"]) == ({"pokemon": 1}, 1)

    requests.post(f"{admin}/faults", json={"route": "pokemon", "kind": "status", "times": None})
    assert requests.delete(f"{admin}/faults").status_code == 200
    assert requests.get(f"{sandbox.pokeapi_url}/pokemon/1", timeout=5).status_code == 200

    assert requests.put(f"{admin}/latency", json={"seconds": 0.05}).status_code == 200
    assert sandbox.latency == 0.05
    assert requests.post(f"{admin}/reset").status_code == 200
    counted = requests.get(f"{admin}/requests").json()
    assert (counted["counts"], counted["total"]) == ({}, 0)
    bad = requests.post(f"{admin}/faults", json={"route": "pokemon", "kind": "explode"})
    assert bad.status_code == 400
    assert "explode" in bad.json()["error"]
    assert sandbox.calls() == 0


def test_cli_serves_until_sigterm():
    """`python -m sandbox` prints its address, serves, and exits cleanly on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--token", "cli-token"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("sandbox upstream listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[1]
        projects = requests.get(
            f"{base_url}/api/v1alpha/projects",
            headers={"Authorization": "Token cli-token"},
            timeout=5,
        )
        assert projects.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_standalone_server_lifecycle():
    """A server runs as a context manager, and stopping it ends hung requests at once."""
    with SandboxServer(seed=1) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert requests.get(f"{server.pokeapi_url}/pokemon/1", timeout=5).status_code == 200
        server.inject("pokemon", "hang", seconds=30)
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client.sendall(b"GET /api/v2/pokemon/1 HTTP/1.1\r\nHost: sandbox\r\n\r\n")
        started = time.monotonic()
    with client, contextlib.suppress(ConnectionResetError):
        assert client.recv(1024) == b""
    assert time.monotonic() - started < 5
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.pokeapi_url}/pokemon/1", timeout=5)


def test_public_url_is_used_in_links() -> None:
    """Behind a compose network, links name the service, not the bound address."""
    with SandboxServer(public_url="http://sandbox:8000") as server:
        bound = f"http://127.0.0.1:{server.port}"
        page = requests.get(f"{bound}/api/v2/pokemon?limit=1", timeout=5).json()
        assert page["next"].startswith("http://sandbox:8000/api/v2/pokemon?")


def test_prewarm_serves_the_same_bytes() -> None:
    """A prewarmed sandbox answers exactly as a lazily building one does."""
    with (
        SandboxServer(public_url="http://s") as lazy,
        SandboxServer(prewarm=True, public_url="http://s") as warm,
    ):
        for name in ("pikachu", "ivysaur", "rayquaza"):
            bodies = [
                requests.get(f"http://127.0.0.1:{server.port}/api/v2/pokemon/{name}", timeout=5)
                for server in (lazy, warm)
            ]
            assert bodies[0].status_code == bodies[1].status_code == 200
            assert bodies[0].content == bodies[1].content


def test_a_budget_answers_429_with_retry_after_above_its_rate(sandbox) -> None:
    """5/s on the pokemon route: a burst of 8 gets 5 answers and 3 429s (Retry-After 2),
    other routes are not limited, and the counts say so; a new rate applies at once."""
    sandbox.set_budget("pokemon", 5, retry_after=2)
    with requests.Session() as session:
        answers = [session.get(sandbox.pokeapi_url + "/pokemon/pikachu") for _ in range(8)]
        statuses = [answer.status_code for answer in answers]
        assert statuses.count(200) == 5
        assert statuses.count(429) == 3
        assert {a.headers["Retry-After"] for a in answers if a.status_code == 429} == {"2"}
        assert sandbox.budget_counts()["pokemon"] == {"rate": 5, "allowed": 5, "refused": 3}
        assert session.get(sandbox.pokeapi_url + "/pokemon?limit=1").status_code == 200
        sandbox.set_budget("pokemon", 0)
        assert session.get(sandbox.pokeapi_url + "/pokemon/pikachu").status_code == 200
