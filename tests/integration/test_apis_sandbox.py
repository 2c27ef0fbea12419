"""The API layer against the sandbox upstream over real HTTP on loopback."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from apis import CmsAPI, PokeAPI, SemaphoreAPI, errors
from apis.client import ApiClient
from apis.config import ApiSettings

C = TypeVar("C", bound=ApiClient)

TOKEN = "sandbox-token"


@pytest.fixture
def make_client(sandbox: Any) -> Callable[..., Any]:
    """Build a client of the sandbox with fast retries; keyword args override settings."""

    def build(cls: type[C], **overrides: Any) -> C:
        values: dict[str, Any] = {
            "pokeapi_base_url": sandbox.pokeapi_url,
            "cms_base_url": sandbox.cms_url,
            "semaphore_base_url": sandbox.semaphore_url,
            "semaphore_api_token": TOKEN,
            "http_retry_attempts": 4,
            "http_retry_backoff_initial": 0.01,
            "http_retry_backoff_max": 0.05,
            "http_retry_max_seconds": 10,
            "http_connect_timeout": 1,
            "http_read_timeout": 1,
        }
        values.update(overrides)
        return cls(cls.configure(ApiSettings(**values)))

    return build


# -- normal data -------------------------------------------------------------------


def test_get_pokemon_returns_the_real_record(make_client, sandbox) -> None:
    """charizard arrives decoded, with its validators."""
    payload = make_client(PokeAPI).get_pokemon("charizard")
    assert payload.data["id"] == 6
    assert payload.data["name"] == "charizard"
    assert payload.data["sprites"]["front_default"].endswith("/6.png")
    assert payload.etag
    assert sandbox.calls("pokemon") == 1


def test_get_pokemon_by_id(make_client) -> None:
    """An id is a valid path parameter."""
    assert make_client(PokeAPI).get_pokemon(25).data["name"] == "pikachu"


def test_list_pokemon_one_page(make_client) -> None:
    """A page carries count, next and results like the live API."""
    page = make_client(PokeAPI).list_pokemon(limit=5, offset=0)
    assert page["count"] == 1351
    assert len(page["results"]) == 5
    assert page["next"]
    assert page["previous"] is None


def test_params_join_a_query_the_url_already_has(make_client) -> None:
    """A link with a query keeps it; params are appended with `&`, percent-encoded."""
    client = make_client(PokeAPI)
    first = client.list_pokemon(limit=5, offset=3)["results"]
    page = client.fetch("/pokemon?limit=2", params={"offset": 3, "x": "a b&c"}).data
    assert page["results"] == first[:2]


def test_a_call_with_a_json_body_is_sent_once_and_not_retried(make_client, sandbox) -> None:
    """Not idempotent: a 503 is raised after one request, never sent twice."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    with pytest.raises(errors.ServerError):
        make_client(PokeAPI).request("POST", "/pokemon/pikachu", json={"note": "é"})
    assert sandbox.calls("pokemon") == 1


def test_iter_all_pokemon_follows_next_to_the_end(make_client, sandbox) -> None:
    """Every name of the index, once, by following `next`."""
    names = [entry["name"] for entry in make_client(PokeAPI).iter_all_pokemon(page_size=500)]
    assert len(names) == 1351
    assert len(set(names)) == 1351
    assert sandbox.calls("pokemon_list") == 3


def test_cms_article_and_all_pages(make_client, sandbox) -> None:
    """An article by slug, and every article across offset pages."""
    cms = make_client(CmsAPI)
    first_page = cms.get_articles(limit=10, offset=0)
    slug = first_page["entities"][0]["slug"]
    assert cms.get(slug).data["slug"] == slug
    sandbox.reset()
    articles = cms.get_all_articles(page_size=10)
    assert len(articles) == first_page["total"]
    assert len({a["slug"] for a in articles}) == first_page["total"]
    assert sandbox.calls("articles") == -(-first_page["total"] // 10)


def test_semaphore_follows_link_header_through_every_page(make_client, sandbox) -> None:
    """75 pipelines of a project arrive from 3 pages of 30."""
    semaphore = make_client(SemaphoreAPI)
    projects = semaphore.list_projects()
    assert projects
    counts = {}
    sandbox.reset()
    for project in projects:
        project_id = project["metadata"]["id"]
        counts[project_id] = len(semaphore.list_pipelines(project_id))
    assert sorted(counts.values()) == [0, 30, 75]
    assert sandbox.calls("pipelines") == 3 + 1 + 1
    pipeline_id = semaphore.list_pipelines(projects[0]["metadata"]["id"])[0]["ppl_id"]
    assert semaphore.get_pipeline(pipeline_id).data["pipeline"]["ppl_id"] == pipeline_id


def test_the_server_receives_the_token_and_user_agent_and_401s_a_wrong_token(
    make_client, sandbox
) -> None:
    """The headers as the sandbox read them; a token it does not accept gets its 401."""
    assert make_client(SemaphoreAPI).list_projects()
    [seen] = sandbox.received("projects")
    assert seen.headers["authorization"] == f"Token {TOKEN}"
    assert seen.headers["user-agent"] == "SemaphoreCI v2.0 Client"
    with pytest.raises(errors.AuthError) as refused:
        make_client(SemaphoreAPI, semaphore_api_token="not-the-sandbox-token").list_projects()
    assert refused.value.status == 401
    assert sandbox.received("projects")[-1].headers["authorization"] == (
        "Token not-the-sandbox-token"
    )


def test_gzip_bodies_are_asked_for_and_decoded(make_client, sandbox) -> None:
    """The server receives `Accept-Encoding: gzip` (it then gzips) and the record decodes."""
    client = make_client(PokeAPI)
    assert client.get_pokemon("pikachu").data["id"] == 25
    [seen] = sandbox.received("pokemon")
    assert "gzip" in seen.headers["accept-encoding"]


# -- faults, with exact call counts -------------------------------------------------


def test_503_twice_then_success_after_three_calls(make_client, sandbox) -> None:
    """Transient failures are retried until the upstream recovers."""
    sandbox.inject("pokemon", "status", status=503, times=2)
    assert make_client(PokeAPI).get_pokemon("pikachu").data["id"] == 25
    assert sandbox.calls("pokemon") == 3


@pytest.mark.parametrize("status", [502, 503, 504])
def test_transient_statuses_forever_stop_at_the_attempt_bound(
    make_client, sandbox, status: int
) -> None:
    """A persistent transient failure costs exactly the attempt budget, then raises."""
    sandbox.inject("pokemon", "status", status=status, times=None)
    with pytest.raises(errors.ServerError) as caught:
        make_client(PokeAPI, http_retry_attempts=3).get_pokemon("pikachu")
    assert caught.value.status == status
    assert sandbox.calls("pokemon") == 3


def test_503_forever_stops_at_the_time_bound(make_client, sandbox) -> None:
    """The total-seconds budget ends retries before the attempt budget does."""
    sandbox.inject("pokemon", "status", status=503, times=None)
    client = make_client(
        PokeAPI,
        http_retry_attempts=10,
        http_retry_backoff_initial=0.2,
        http_retry_backoff_max=0.2,
        # Nine full-jitter waits of up to 0.2 s each sum below 0.3 s with a chance of
        # about 1 in 10,000, so the time budget, not the attempt budget, ends this.
        http_retry_max_seconds=0.3,
    )
    started = time.monotonic()
    with pytest.raises(errors.ServerError):
        client.get_pokemon("pikachu")
    # The documented bound: no retry starts after max_seconds, and the last attempt is
    # bounded by its own total timeout.
    assert time.monotonic() - started < 0.3 + client.config.total_timeout
    assert 1 <= sandbox.calls("pokemon") < 10


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, errors.ServerError),
        (400, errors.ClientError),
        (403, errors.AuthError),
        (422, errors.ClientError),
    ],
)
def test_permanent_statuses_are_not_retried(make_client, sandbox, status, error) -> None:
    """500 and 4xx answers cost one call."""
    sandbox.inject("pokemon", "status", status=status)
    with pytest.raises(error):
        make_client(PokeAPI).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


def test_404_is_one_call_and_not_found(make_client, sandbox) -> None:
    """An unknown name is permanent."""
    with pytest.raises(errors.NotFound) as caught:
        make_client(PokeAPI).get_pokemon("no-such-pokemon")
    assert caught.value.status == 404
    assert caught.value.path == "/api/v2/pokemon/no-such-pokemon"
    assert sandbox.calls("pokemon") == 1


def test_401_is_one_call_and_not_logged_as_an_error(make_client, sandbox, caplog) -> None:
    """A 401 is an expected answer: logged, but not at error level."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.AuthError):
        make_client(SemaphoreAPI, semaphore_api_token="wrong-token-value").list_projects()
    assert sandbox.calls("projects") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("401" in r.getMessage() for r in caplog.records)


def test_other_errors_are_logged_once_with_service_status_and_path(
    make_client, sandbox, caplog
) -> None:
    """One error line per failed call, naming service, status and path."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.NotFound):
        make_client(PokeAPI).get_pokemon("missingno")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert "service=pokeapi" in lines[0]
    assert "status=404" in lines[0]
    assert "/pokemon/missingno" in lines[0]


def test_each_retry_is_logged(make_client, sandbox, caplog) -> None:
    """Operators see every client retry."""
    caplog.set_level(logging.DEBUG)
    sandbox.inject("pokemon", "status", status=503, times=2)
    make_client(PokeAPI).get_pokemon("pikachu")
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying upstream call")]
    assert len(retries) == 2


def test_429_retry_after_is_honoured(make_client, sandbox) -> None:
    """The next call comes no sooner than Retry-After seconds later."""
    sandbox.inject("pokemon", "rate_limited", retry_after=1)
    assert make_client(PokeAPI).get_pokemon("pikachu").data["id"] == 25
    first, second = sandbox.call_times("pokemon")
    assert second - first >= 1.0


def test_429_with_retry_after_beyond_the_cap_is_raised_at_once(make_client, sandbox) -> None:
    """A long pause is left to the task layer instead of holding the worker."""
    sandbox.inject("pokemon", "rate_limited", retry_after=120)
    with pytest.raises(errors.RateLimited) as caught:
        make_client(PokeAPI).get_pokemon("pikachu")
    assert caught.value.retry_after == 120
    assert sandbox.calls("pokemon") == 1


def test_a_hang_ends_at_the_read_timeout(make_client, sandbox) -> None:
    """A silent upstream costs one read timeout per attempt, not forever."""
    sandbox.inject("pokemon", "hang", seconds=5, times=None)
    client = make_client(PokeAPI, http_read_timeout=0.3, http_retry_attempts=2)
    started = time.monotonic()
    with pytest.raises(errors.UpstreamTimeout):
        client.get_pokemon("pikachu")
    # Each attempt ends at its read timeout, far inside its total deadline.
    assert time.monotonic() - started < 2 * client.config.total_timeout
    assert sandbox.calls("pokemon") == 2


def test_connection_reset_is_retried(make_client, sandbox) -> None:
    """A reset connection is transient."""
    sandbox.inject("pokemon", "reset", times=1)
    assert make_client(PokeAPI).get_pokemon("pikachu").data["id"] == 25
    assert sandbox.calls("pokemon") == 2


def test_truncated_body_is_a_connection_error_and_retried(make_client, sandbox) -> None:
    """A body shorter than its Content-Length is a broken transfer, retried."""
    sandbox.inject("pokemon", "truncated", times=1)
    assert make_client(PokeAPI).get_pokemon("pikachu").data["id"] == 25
    assert sandbox.calls("pokemon") == 2


def test_malformed_json_is_a_typed_error_after_one_call(make_client, sandbox) -> None:
    """An unusable body is permanent: no retry."""
    sandbox.inject("pokemon", "malformed_json")
    with pytest.raises(errors.InvalidResponse):
        make_client(PokeAPI).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


def test_wrong_content_type_is_invalid_response(make_client, sandbox) -> None:
    """An HTML page is not data."""
    sandbox.inject("pokemon", "wrong_content_type")
    with pytest.raises(errors.InvalidResponse, match="content type"):
        make_client(PokeAPI).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


def test_wrong_shape_is_invalid_response(make_client, sandbox) -> None:
    """Valid JSON of the wrong shape is caught in the API layer."""
    sandbox.inject("pokemon", "wrong_shape")
    with pytest.raises(errors.InvalidResponse):
        make_client(PokeAPI).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


def test_redirect_to_another_host_is_not_followed(make_client, sandbox) -> None:
    """A 3xx is an error; the other host is never contacted."""
    sandbox.inject("pokemon", "redirect")
    with pytest.raises(errors.UnexpectedRedirect, match=r"example\.invalid"):
        make_client(PokeAPI).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


def test_a_huge_body_is_cut_off(make_client, sandbox) -> None:
    """A body above the cap raises instead of filling memory."""
    sandbox.inject("pokemon", "huge", size=5 * 1024 * 1024)
    with pytest.raises(errors.ResponseTooLarge):
        make_client(PokeAPI, http_max_response_bytes=1024 * 1024).get_pokemon("pikachu")
    assert sandbox.calls("pokemon") == 1


def test_connection_refused_is_a_connection_error(make_client) -> None:
    """Nobody listening is a transport failure, retried then raised."""
    client = make_client(PokeAPI, pokeapi_base_url="http://127.0.0.1:9/api/v2")
    with pytest.raises(errors.UpstreamConnectionError):
        client.get_pokemon("pikachu")


# -- bad input and missing configuration: zero calls ---------------------------------


@pytest.mark.parametrize(
    "value", ["../admin", "a/b", "x?y=1", "%2e%2e", "", "a" * 500, " charizard"]
)
def test_bad_path_parameters_cost_no_call(make_client, sandbox, value: str) -> None:
    """Hostile parameters are refused before any request."""
    with pytest.raises(errors.InvalidParameter):
        make_client(PokeAPI).get_pokemon(value)
    with pytest.raises(errors.InvalidParameter):
        make_client(CmsAPI).get(value)
    with pytest.raises(errors.InvalidParameter):
        make_client(SemaphoreAPI).list_pipelines(value)
    assert sandbox.calls() == 0


def test_missing_semaphore_token_fails_without_a_request(make_client, sandbox) -> None:
    """No token: a clear error naming the setting, nothing sent."""
    with pytest.raises(errors.NotConfigured, match="SEMAPHORE_API_TOKEN"):
        make_client(SemaphoreAPI, semaphore_api_token=None).list_projects()
    assert sandbox.calls() == 0


def test_missing_cms_url_fails_without_a_request(make_client, sandbox) -> None:
    """No base URL: a clear error naming the setting."""
    with pytest.raises(errors.NotConfigured, match="CMS_BASE_URL"):
        make_client(CmsAPI, cms_base_url=None).get("hello-world")
    assert sandbox.calls() == 0


# -- secrets -----------------------------------------------------------------------


def test_token_never_appears_in_logs_errors_or_reprs(make_client, sandbox, caplog) -> None:
    """The Semaphore token stays out of every text the layer produces."""
    secret = "s3cr3t-token-do-not-leak"
    caplog.set_level(logging.DEBUG)
    client = make_client(SemaphoreAPI, semaphore_api_token=secret)
    texts = [repr(client), repr(client.config)]
    for kind, params in [("status", {"status": 503}), ("unauthorized", {})]:
        sandbox.inject("projects", kind, times=None, **params)
        with pytest.raises(errors.UpstreamError) as caught:
            client.list_projects()
        sandbox.clear_faults()
        texts += [str(caught.value), repr(caught.value), caught.value.body_excerpt]
        texts.append(repr(pickle.loads(pickle.dumps(caught.value)).args))
    texts += [record.getMessage() for record in caplog.records]
    texts.append(caplog.text)
    # The texts are the real ones: both failures were raised and logged with their status.
    assert any("-> 503" in text for text in texts)
    assert any("-> 401" in text for text in texts)
    assert [seen.headers["authorization"] for seen in sandbox.received("projects")][-1] == (
        f"Token {secret}"
    )  # the token was sent, so it could have leaked
    for text in texts:
        assert secret not in text


def test_settings_repr_hides_the_token() -> None:
    """SecretStr keeps the token out of the settings' repr."""
    settings = ApiSettings(semaphore_api_token="another-secret-value")
    assert "another-secret-value" not in repr(settings)
    assert "another-secret-value" not in str(settings.model_dump())


def test_a_slow_drip_ends_at_the_total_deadline(make_client, sandbox) -> None:
    """A body sent a byte at a time cannot hold a worker past connect + 2 x read timeout,
    gzipped too (its first ~70 bytes decode to nothing: 3.5 s at this drip)."""
    sandbox.inject("pokemon", "slow_drip", interval=0.05, times=None)
    client = make_client(
        PokeAPI, http_read_timeout=0.3, http_connect_timeout=0.3, http_retry_attempts=1
    )
    started = time.monotonic()
    with pytest.raises(errors.UpstreamTimeout, match="answer not complete after"):
        client.get_pokemon("pikachu")
    assert time.monotonic() - started < client.config.total_timeout + 1
    assert sandbox.calls("pokemon") == 1


def test_get_pokemon_decodes_only_the_used_fields_unless_full(make_client) -> None:
    """The lean decode skips moves and the rest; `full=True` keeps them."""
    client = make_client(PokeAPI)
    lean = client.get_pokemon("charizard").data
    assert lean == {
        "id": 6,
        "name": "charizard",
        "height": 17,
        "weight": 905,
        "sprites": {"front_default": lean["sprites"]["front_default"]},
    }
    full = client.get_pokemon("charizard", full=True).data
    assert len(full["moves"]) > 10
    assert {key: full[key] for key in ("id", "name", "height", "weight")} == {
        key: lean[key] for key in ("id", "name", "height", "weight")
    }


def test_a_record_of_another_shape_is_refused_naming_what_is_missing(make_client, sandbox) -> None:
    """An unexpected shape is not hidden by the lean decoder, nor decoded a second time:
    the error says which field is missing."""
    sandbox.inject("pokemon", "wrong_shape", shape="object")
    with pytest.raises(errors.InvalidResponse, match="missing required field `id`"):
        make_client(PokeAPI).get_pokemon("pikachu")


def test_retry_after_zero_still_waits_the_jittered_backoff(sandbox) -> None:
    """`Retry-After: 0` from every client at once is a retry storm: the jitter still
    spreads the retries (it retried with no wait at all)."""
    sandbox.inject("pokemon", "rate_limited", retry_after=0)
    sleeps: list[float] = []
    settings = ApiSettings(
        pokeapi_base_url=sandbox.pokeapi_url,
        http_retry_backoff_initial=0.2,
        http_retry_backoff_max=0.2,
        redis_url="",
    )
    client = PokeAPI(PokeAPI.configure(settings), sleep=sleeps.append)
    assert client.get_pokemon("pikachu").data["id"] == 25
    assert len(sleeps) == 1
    assert 0 < sleeps[0] <= 0.2
