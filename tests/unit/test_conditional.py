"""The client's conditional path: validators sent, a 304 mapped to "unchanged", never an
error, a retry or a breaker failure; a 304 nobody asked for refused."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from apis import CmsAPI, PokeAPI, Validators, errors
from apis.breaker import CircuitBreaker
from apis.conditional import freshness_lifetime
from apis.config import ApiSettings, CircuitPolicy, UpstreamConfig
from tests.support.metrics import sample


def pokeapi(sandbox: Any, **overrides: Any) -> PokeAPI:
    values: dict[str, Any] = {
        "pokeapi_base_url": sandbox.pokeapi_url,
        "http_retry_attempts": 4,
        "http_retry_backoff_initial": 0.01,
        "http_retry_backoff_max": 0.02,
        **overrides,
    }
    return PokeAPI(PokeAPI.configure(ApiSettings(**values)))


def revalidations(service: str, outcome: str) -> float:
    return sample("apiworker_revalidations_total", service=service, outcome=outcome)


def stored(client: PokeAPI, name: str = "pikachu") -> Validators:
    payload = client.get_pokemon(name)
    return Validators(payload.etag, payload.last_modified)


def test_validators_are_sent_and_a_304_is_unchanged_without_data(sandbox) -> None:
    """If-None-Match and If-Modified-Since go out; the 304 is a Payload, not_modified."""
    client = pokeapi(sandbox)
    validators = stored(client)
    before = revalidations("pokeapi", "not_modified")
    payload = client.get_pokemon("pikachu", validators=validators)
    assert payload.not_modified
    assert payload.data is None
    assert (payload.etag, payload.last_modified) == (validators.etag, validators.last_modified)
    assert payload.max_age == 86400
    assert sandbox.conditional_calls() == {"pokemon": 1}
    assert sandbox.not_modified("pokemon") == 1
    assert revalidations("pokeapi", "not_modified") == before + 1


def test_validators_map_to_both_conditional_headers() -> None:
    """The ETag goes out exactly as stored (weak ones too), the date as If-Modified-Since."""
    validators = Validators('W/"abc"', "Sat, 01 Mar 2025 00:00:00 GMT")
    assert validators.headers() == {
        "If-None-Match": 'W/"abc"',
        "If-Modified-Since": "Sat, 01 Mar 2025 00:00:00 GMT",
    }
    assert not Validators()
    assert Validators(etag='"x"', last_modified=None).headers() == {"If-None-Match": '"x"'}


def test_a_weak_etag_as_stored_earns_a_304_and_the_answer_validators_are_kept(sandbox) -> None:
    """W/"x" is sent as it was stored; the ETag the 304 carries replaces it."""
    client = pokeapi(sandbox)
    strong = stored(client).etag
    payload = client.get_pokemon("pikachu", validators=Validators(etag=f"W/{strong}"))
    assert payload.not_modified
    assert payload.etag == strong


def test_if_modified_since_alone_earns_a_304(sandbox) -> None:
    """An upstream that sent only Last-Modified is revalidated by date."""
    client = pokeapi(sandbox)
    modified = stored(client).last_modified
    payload = client.get_pokemon("pikachu", validators=Validators(last_modified=modified))
    assert payload.not_modified


def test_a_changed_record_is_a_full_answer_counted_as_modified(sandbox) -> None:
    """A stale validator gets 200: the new body and its new ETag."""
    client = pokeapi(sandbox)
    validators = stored(client)
    sandbox.change_record("pokemon", "pikachu")
    before = revalidations("pokeapi", "modified")
    payload = client.get_pokemon("pikachu", validators=validators)
    assert not payload.not_modified
    assert payload.data["name"] == "pikachu"
    assert payload.etag != validators.etag
    assert revalidations("pokeapi", "modified") == before + 1


def test_a_304_is_one_call_never_retried(sandbox) -> None:
    """With four attempts allowed, a 304 is still exactly one request."""
    client = pokeapi(sandbox)
    validators = stored(client)
    sandbox.reset()
    assert client.get_pokemon("pikachu", validators=validators).not_modified
    assert sandbox.calls("pokemon") == 1


def test_a_304_counts_as_an_answer_for_the_circuit_breaker(sandbox) -> None:
    """Failure, 304, failure: the 304 reset the count, so two failures do not open it."""
    client = pokeapi(sandbox, http_retry_attempts=1)
    validators = stored(client)
    config = UpstreamConfig(
        "pokeapi",
        sandbox.pokeapi_url,
        state_redis_url="redis://unused.invalid:1/0",
        circuit=CircuitPolicy(2, 60.0, 30.0),
    )
    client.breaker = CircuitBreaker(config, fakeredis.FakeRedis())
    sandbox.inject("pokemon", "status", status=503)
    with pytest.raises(errors.ServerError):
        client.get_pokemon("pikachu", validators=validators)
    assert client.get_pokemon("pikachu", validators=validators).not_modified
    sandbox.inject("pokemon", "status", status=503)
    with pytest.raises(errors.ServerError):
        client.get_pokemon("pikachu", validators=validators)
    assert client.breaker.state() == "closed"


def test_a_304_to_a_request_without_validators_is_an_invalid_response(sandbox) -> None:
    """An upstream answering 304 to an unconditional GET is broken: refused, one call."""
    client = pokeapi(sandbox)
    sandbox.inject("pokemon", "status", status=304)
    with pytest.raises(errors.InvalidResponse) as raised:
        client.get_pokemon("pikachu")
    assert raised.value.status == 304
    assert sandbox.calls("pokemon") == 1
    assert client.get_pokemon("pikachu").data["name"] == "pikachu"  # connection still good


def test_an_unsafe_stored_validator_is_not_sent(sandbox) -> None:
    """A validator with a line break is dropped: the fetch is unconditional, not smuggled."""
    client = pokeapi(sandbox)
    payload = client.get_pokemon("pikachu", validators=Validators(etag='"x"\r\nX-Evil: 1'))
    assert payload.data["name"] == "pikachu"
    assert sandbox.conditional_calls() == {}


def test_cms_articles_and_pages_revalidate(sandbox) -> None:
    """Every upstream gets the conditional path from the shared client."""
    client = CmsAPI(CmsAPI.configure(ApiSettings(cms_base_url=sandbox.cms_url)))
    article = client.get("hello-world")
    again = client.get("hello-world", validators=Validators(article.etag, article.last_modified))
    assert again.not_modified
    page = client.get_articles_page(limit=100)
    validators = Validators(page.etag, page.last_modified)
    assert client.get_articles_page(limit=100, validators=validators).not_modified


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Cache-Control": "public, max-age=86400, s-maxage=600"}, 600.0),
        ({"Cache-Control": "max-age=120"}, 120.0),
        ({"Cache-Control": 'max-age="90"'}, 90.0),
        ({"Cache-Control": "max-age=120", "Age": "100"}, 20.0),
        ({"Cache-Control": "max-age=120", "Age": "500"}, 0.0),
        ({"Cache-Control": "no-cache, max-age=120"}, 0.0),
        ({"Cache-Control": "no-store"}, 0.0),
        ({"Cache-Control": "public"}, None),
        ({"Cache-Control": "max-age=soon"}, None),
    ],
)
def test_freshness_lifetime_reads_cache_control_as_a_shared_cache(headers, expected) -> None:
    """s-maxage over max-age, minus Age; no-cache and no-store are 0; junk is nothing."""
    assert freshness_lifetime(headers) == expected
