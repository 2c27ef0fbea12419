"""Properties of validation and transforms over generated inputs, and 10,000+ real jobs."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apis import reset_clients
from results.runtime import Runtime, set_runtime
from sandbox.pokeapi import load_catalogue
from settings import WorkerSettings
from tasks import validation
from tasks.cms import article_summary
from tasks.errors import InvalidInput, InvalidPayload
from tasks.pokemon import fetch_pokemon
from tasks.pokemon_record import pokemon_ref, pokemon_summary
from tasks.semaphore import checked_project_id, pipeline_summary

JOBS = 12_000
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
ANY_INPUT = JSON | st.binary(max_size=20) | st.text(max_size=150) | st.integers()
NAME_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_./ %?#\u00e9", max_size=110)

# -- validation -----------------------------------------------------------------------


@given(ANY_INPUT | NAME_TEXT)
def test_pokemon_ref_normalises_or_refuses(value: object) -> None:
    """A lower-case name or a canonical id, stable when validated again; else InvalidInput."""
    try:
        ref = pokemon_ref(value)
    except InvalidInput:
        return
    assert 1 <= len(ref) <= validation.MAX_LENGTH
    assert re.fullmatch(r"[1-9][0-9]*|[a-z0-9][a-z0-9-]*", ref)
    assert pokemon_ref(ref) == ref


@given(ANY_INPUT | NAME_TEXT)
def test_slug_and_project_id_return_their_input_or_refuse(value: object) -> None:
    """Slugs and project ids are checked, never rewritten; anything else is InvalidInput."""
    for check, pattern in (
        (validation.slug, r"[a-z0-9][a-z0-9_-]*"),
        (checked_project_id, r"[A-Za-z0-9][A-Za-z0-9-]*"),
    ):
        try:
            text = check(value)
        except InvalidInput:
            continue
        assert text == str(value)
        assert re.fullmatch(pattern, text)
        assert len(text) <= validation.MAX_LENGTH


# -- transforms -----------------------------------------------------------------------

POKEMON_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(-5, 10**6) | JSON,
        "name": st.text(max_size=12) | JSON,
        "height": st.integers(-5, 10**4) | JSON,
        "weight": st.integers(-5, 10**5) | JSON,
        "sprites": st.fixed_dictionaries({}, optional={"front_default": st.text() | JSON}) | JSON,
        "extra": JSON,
    },
)


WELL_FORMED_POKEMON = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**5),
        "name": st.text(min_size=1, max_size=12),
        "height": st.integers(0, 10**4),
        "weight": st.integers(0, 10**5),
        "sprites": st.fixed_dictionaries({"front_default": st.none() | st.text(max_size=30)}),
    },
    optional={"extra": JSON},
)


@given(WELL_FORMED_POKEMON | POKEMON_SHAPED | JSON)
def test_pokemon_summary_is_valid_or_invalid_payload(record: Any) -> None:
    """Any PokeAPI-shaped body gives the documented shape or InvalidPayload, nothing else."""
    try:
        summary = pokemon_summary(record)
    except InvalidPayload:
        return
    assert list(summary) == ["id", "name", "image", "height", "weight"]
    assert isinstance(summary["id"], int)
    assert summary["id"] >= 1
    assert isinstance(summary["name"], str)
    assert summary["name"]
    assert summary["image"] is None or isinstance(summary["image"], str)
    assert re.fullmatch(r"\d+ cm", summary["height"])
    assert re.fullmatch(r"\d+(\.\d)? kg", summary["weight"])
    assert int(summary["height"].split()[0]) == record["height"] * 10


TIMESTAMP = st.one_of(
    st.none(), st.text(max_size=25), st.fixed_dictionaries({"seconds": JSON, "nanos": JSON})
)
ARTICLE_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        key: st.text(max_size=10) | JSON
        for key in ("id", "slug", "title", "author", "published_at", "updated_at")
    }
    | {"tags": st.lists(st.text(max_size=5)) | JSON},
)
PIPELINE_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        key: st.text(max_size=10) | JSON
        for key in ("ppl_id", "name", "branch_name", "commit_sha", "state", "result")
    }
    | {
        "created_at": TIMESTAMP | st.fixed_dictionaries({"seconds": st.integers()}),
        "done_at": TIMESTAMP,
    },
)


WELL_FORMED_ARTICLE = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**6) | st.text(min_size=1, max_size=8),
        "slug": st.text(min_size=1, max_size=10),
        "title": st.text(max_size=20),
    },
    optional={
        "author": st.none() | st.text(max_size=10),
        "tags": st.lists(st.text(max_size=5), max_size=4),
        "published_at": st.none() | st.text(max_size=25),
        "updated_at": st.none() | st.text(max_size=25),
        "body": JSON,
    },
)
WELL_FORMED_PIPELINE = st.fixed_dictionaries(
    {"ppl_id": st.text(min_size=1, max_size=10), "name": st.text(max_size=10)},
    optional={
        key: st.none() | st.text(max_size=10)
        for key in ("branch_name", "commit_sha", "state", "result")
    }
    | {
        "created_at": st.none()
        | st.text(max_size=25)
        | st.fixed_dictionaries({"seconds": st.integers(0, 4 * 10**9), "nanos": st.integers()}),
        "done_at": st.none() | st.fixed_dictionaries({"seconds": st.integers(0, 4 * 10**9)}),
    },
)


def optional_text(payload: dict[str, Any], key: str) -> str | None:
    """What a summary keeps of an optional string: the string, or None for none/empty."""
    return payload.get(key) or None


def timestamp(payload: dict[str, Any], key: str) -> str | None:
    """A protobuf timestamp as ISO 8601 UTC (None for 0), or the optional string."""
    value = payload.get(key)
    if isinstance(value, dict):
        seconds = int(value["seconds"])
        if seconds == 0:
            return None
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    return optional_text(payload, key)


@given(WELL_FORMED_ARTICLE | ARTICLE_SHAPED | JSON)
def test_article_summary_copies_every_field_and_refuses_only_malformed_articles(
    article: Any,
) -> None:
    """CMS articles: each summary field is the article's own, or InvalidPayload."""
    try:
        summary = article_summary(article)
    except InvalidPayload:
        assert not is_well_formed_article(article), article
        return
    assert summary == {
        "id": article["id"],
        "slug": article["slug"],
        "title": article["title"],
        "author": optional_text(article, "author"),
        "tags": list(article.get("tags") or []),
        "published_at": optional_text(article, "published_at"),
        "updated_at": optional_text(article, "updated_at"),
    }
    assert isinstance(summary["id"], int | str)
    assert not isinstance(summary["id"], bool)


def is_well_formed_article(article: Any) -> bool:
    """Whether `article` has the shape WELL_FORMED_ARTICLE draws from."""
    if not isinstance(article, dict):
        return False
    return (
        isinstance(article.get("id"), int | str)
        and not isinstance(article.get("id"), bool)
        and isinstance(article.get("slug"), str)
        and isinstance(article.get("title"), str)
        and all(
            article.get(key) is None or isinstance(article[key], str)
            for key in ("author", "published_at", "updated_at")
        )
        and (
            not article.get("tags")
            or (
                isinstance(article["tags"], list)
                and all(isinstance(tag, str) for tag in article["tags"])
            )
        )
    )


@given(WELL_FORMED_ARTICLE)
def test_a_well_formed_article_is_never_refused(article: dict[str, Any]) -> None:
    """Every article of the documented shape gives a summary, whatever else it carries."""
    assert article_summary(article)["slug"] == article["slug"]


@given(WELL_FORMED_PIPELINE | PIPELINE_SHAPED | JSON)
def test_pipeline_summary_copies_every_field_or_is_invalid_payload(pipeline: Any) -> None:
    """Semaphore pipelines, protobuf timestamps included: the summary, or InvalidPayload."""
    try:
        summary = pipeline_summary(pipeline)
    except InvalidPayload:
        return
    assert summary == {
        "id": pipeline["ppl_id"],
        "name": pipeline["name"],
        "branch": optional_text(pipeline, "branch_name"),
        "commit_sha": optional_text(pipeline, "commit_sha"),
        "state": optional_text(pipeline, "state"),
        "result": optional_text(pipeline, "result"),
        "created_at": timestamp(pipeline, "created_at"),
        "done_at": timestamp(pipeline, "done_at"),
    }


@given(WELL_FORMED_PIPELINE)
def test_a_well_formed_pipeline_is_never_refused(pipeline: dict[str, Any]) -> None:
    """Every pipeline of the documented shape gives a summary with ISO 8601 timestamps."""
    summary = pipeline_summary(pipeline)
    for key in ("created_at", "done_at"):
        value = pipeline.get(key)
        if isinstance(value, dict) and value["seconds"]:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary[key])


# -- 10,000+ jobs through the real task -------------------------------------------------


def generated_inputs(count: int, seed: int = 20251125) -> Iterator[object]:
    """Job arguments as producers might send them: mostly wrong, some right, some odd."""
    rng = random.Random(seed)
    names = list(load_catalogue().names[:40])
    junk = string.printable + "\u00e9\u00fc\u4e2d\u0000\u202e"
    for _ in range(count):
        pick = rng.random()
        if pick < 0.04:
            yield rng.choice(names)
        elif pick < 0.06:
            yield rng.choice(names).upper()
        elif pick < 0.08:
            yield rng.choice([str(rng.randint(1, 151)), rng.randint(1, 151), "0006"])
        elif pick < 0.09:
            yield f"no-such-pokemon-{rng.randint(1, 5)}"
        elif pick < 0.55:
            yield "".join(rng.choice(junk) for _ in range(rng.randint(0, 120)))
        elif pick < 0.65:
            yield rng.choice(["../admin", "a/b", "x?y=1", "%2e%2e", "-x", " pikachu", "a" * 101])
        else:
            yield rng.choice(
                [
                    None,
                    True,
                    rng.random(),
                    -rng.randint(0, 10**9),
                    0,
                    [rng.choice(names)],
                    {"name": "pikachu"},
                    b"pikachu",
                    (),
                    float("nan"),
                ]
            )


@pytest.fixture
def eager_runtime(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The task's runtime on fakeredis, its client on the sandbox, one attempt per call."""
    monkeypatch.setenv("POKEAPI_BASE_URL", sandbox.pokeapi_url)
    monkeypatch.setenv("HTTP_RETRY_ATTEMPTS", "1")
    reset_clients()
    runtime = Runtime.build(WorkerSettings(), fakeredis.FakeRedis())
    set_runtime(runtime)
    yield runtime
    set_runtime(None)


def test_ten_thousand_generated_jobs_call_the_upstream_only_for_valid_input(
    eager_runtime: Runtime, sandbox: Any
) -> None:
    """Invalid arguments never reach the upstream; valid ones give a result or NotFound."""
    outcomes: dict[str, int] = {"invalid": 0, "stored": 0, "not found": 0}
    for index, value in enumerate(generated_inputs(JOBS)):
        before = sandbox.calls()
        try:
            pokemon_ref(value)
        except InvalidInput:
            # The task body, run in-process (Celery's tracer costs ~1 ms a job: sampled below).
            with pytest.raises(InvalidInput):
                fetch_pokemon(value)
            if index % 40 == 0:
                result = fetch_pokemon.apply(args=[value])
                assert result.state == "FAILURE"
                assert isinstance(result.result, InvalidInput)
            assert sandbox.calls() == before
            outcomes["invalid"] += 1
            continue
        result = fetch_pokemon.apply(args=[value], task_id=f"job-{index}")
        if result.state == "SUCCESS":
            outcomes["stored"] += 1
            assert eager_runtime.store.redis.exists(f"pokemon:{result.result['name']}")
        else:
            assert type(result.result).__name__ == "NotFound"
            assert sandbox.calls() == before + 1
            outcomes["not found"] += 1
    assert sum(outcomes.values()) == JOBS
    assert min(outcomes.values()) > 100
    assert eager_runtime.store.redis.xlen("events:failures") >= outcomes["not found"]
    print(f"generated jobs: {outcomes}, upstream calls={sandbox.calls()}")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=ANY_INPUT | NAME_TEXT)
def test_hypothesis_inputs_through_the_task_never_call_the_upstream_when_invalid(
    eager_runtime: Runtime, sandbox: Any, value: object
) -> None:
    """Shrinkable counterexamples: the task refuses invalid input before any call."""
    before = sandbox.calls()
    try:
        pokemon_ref(value)
    except InvalidInput:
        with pytest.raises(InvalidInput):
            fetch_pokemon(value)
        assert sandbox.calls() == before
