"""The transforms are pure functions of the upstream payload."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from tasks.cms import article_summary
from tasks.errors import InvalidPayload
from tasks.pokemon_record import js_number, pokemon_summary
from tasks.semaphore import pipeline_summary

RECORDS = sorted((Path(__file__).parents[2] / "sandbox" / "data" / "pokemon").glob("*.json"))


def load(name: str) -> dict:
    return orjson.loads((RECORDS[0].parent / name).read_bytes())


def test_charizard_gives_exactly_the_reference_result() -> None:
    """The reference example, to the character."""
    assert orjson.dumps(pokemon_summary(load("6.json"))) == (
        b'{"id":6,"name":"charizard","image":"https://raw.githubusercontent.com/PokeAPI/'
        b'sprites/master/sprites/pokemon/6.png","height":"170 cm","weight":"90.5 kg"}'
    )


def test_there_are_real_records_to_check() -> None:
    """The parametrised test below must not pass vacuously."""
    assert len(RECORDS) == 16


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_every_real_record_gives_the_right_units_and_types(path: Path) -> None:
    """Height in cm = decimetres x 10, weight in kg = hectograms / 10, JS-style numbers."""
    record = orjson.loads(path.read_bytes())
    summary = pokemon_summary(record)
    assert list(summary) == ["id", "name", "image", "height", "weight"]
    assert summary["id"] == record["id"] == int(path.stem)
    assert summary["name"] == record["name"]
    assert summary["image"] == record["sprites"]["front_default"]
    assert summary["height"] == f"{record['height'] * 10} cm"
    number, unit = summary["weight"].split(" ")
    assert unit == "kg"
    assert float(number) == record["weight"] / 10
    assert not number.endswith(".0")


@pytest.mark.parametrize(
    ("value", "printed"),
    [(170, "170"), (90.5, "90.5"), (4.0, "4"), (0.3, "0.3"), (199.0, "199"), (0.1, "0.1")],
)
def test_numbers_print_as_javascript_prints_them(value: float, printed: str) -> None:
    """A whole number has no `.0`."""
    assert js_number(value) == printed


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("id"),
        lambda r: r.update(id="6"),
        lambda r: r.update(id=True),
        lambda r: r.update(name=None),
        lambda r: r.update(height=-1),
        lambda r: r.update(weight="heavy"),
        lambda r: r.update(sprites=None),
        lambda r: r["sprites"].update(front_default=3),
    ],
)
def test_malformed_records_raise_invalid_payload(mutate) -> None:
    """A payload of the wrong shape is a typed error, never a KeyError."""
    record = copy.deepcopy(load("25.json"))
    mutate(record)
    with pytest.raises(InvalidPayload):
        pokemon_summary(record)


def test_non_object_payload_is_invalid() -> None:
    """A list where an object belongs is refused."""
    with pytest.raises(InvalidPayload):
        pokemon_summary([1, 2, 3])


def test_article_summary_keeps_the_listed_fields() -> None:
    """The body stays in the CMS; the summary carries what lists and links need."""
    article = {
        "id": 1,
        "slug": "hello-world",
        "title": "Hello",
        "author": "Ada",
        "body": "long text",
        "tags": ["news"],
        "published_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-02T00:00:00Z",
    }
    summary = article_summary(article)
    assert "body" not in summary
    assert summary["slug"] == "hello-world"
    assert summary["tags"] == ["news"]


def test_pipeline_summary_reads_semaphore_timestamps() -> None:
    """Semaphore's `{seconds, nanos}` timestamps become ISO 8601; zero means not yet."""
    pipeline = {
        "ppl_id": "p1",
        "name": "Build",
        "branch_name": "main",
        "commit_sha": "abc",
        "state": "DONE",
        "result": "PASSED",
        "created_at": {"seconds": 1700000000, "nanos": 0},
        "done_at": {"seconds": 0, "nanos": 0},
    }
    summary = pipeline_summary(pipeline)
    assert summary["created_at"] == "2023-11-14T22:13:20Z"
    assert summary["done_at"] is None
