"""Pure functions from upstream payloads to the small shapes the results contract documents.

Each raises `InvalidPayload` (never KeyError or TypeError) when the payload lacks what
it needs, so a malformed upstream body is a typed, permanent failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

from tasks.errors import InvalidPayload


class PokemonSummary(TypedDict):
    id: int
    name: str
    image: str | None
    height: str
    weight: str


class ArticleSummary(TypedDict):
    id: int | str
    slug: str
    title: str
    author: str | None
    tags: list[str]
    published_at: str | None
    updated_at: str | None


class ProjectSummary(TypedDict):
    id: str
    name: str


class PipelineSummary(TypedDict):
    id: str
    name: str
    branch: str | None
    commit_sha: str | None
    state: str | None
    result: str | None
    created_at: str | None
    done_at: str | None


def js_number(value: float) -> str:
    """Print a number as JavaScript does: 170.0 is "170", 90.5 is "90.5"."""
    if value == int(value):
        return str(int(value))
    return repr(float(value))


def _field(payload: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidPayload(f"field {key!r} must be {expected}, got {type(value).__name__}")
    return value


def _optional_str(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _timestamp(payload: Mapping[str, Any], key: str) -> str | None:
    """An ISO 8601 string; Semaphore sends protobuf-style `{"seconds": s, "nanos": n}`."""
    value = payload.get(key)
    if isinstance(value, Mapping):
        seconds = value.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | str):
            raise InvalidPayload(f"field {key!r} has no integer seconds")
        try:
            moment = datetime.fromtimestamp(int(seconds), UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidPayload(f"field {key!r} is not a valid timestamp") from exc
        return None if int(seconds) == 0 else moment.isoformat().replace("+00:00", "Z")
    return _optional_str(payload, key)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"{what} must be an object, got {type(value).__name__}")
    return value


def pokemon_summary(record: object) -> PokemonSummary:
    """PokeAPI record → `{id, name, image, height: "170 cm", weight: "90.5 kg"}`.

    PokeAPI gives height in decimetres and weight in hectograms.
    """
    payload = _mapping(record, "pokemon record")
    pokemon_id = _field(payload, "id", int)
    name = _field(payload, "name", str)
    height = _field(payload, "height", int)
    weight = _field(payload, "weight", int)
    if pokemon_id < 1 or not name:
        raise InvalidPayload("pokemon record has an empty name or a non-positive id")
    if height < 0 or weight < 0:
        raise InvalidPayload("pokemon height and weight must not be negative")
    sprites = _mapping(payload.get("sprites"), "field 'sprites'")
    return {
        "id": pokemon_id,
        "name": name,
        "image": _optional_str(sprites, "front_default"),
        "height": f"{js_number(height * 10)} cm",
        "weight": f"{js_number(weight / 10)} kg",
    }


def article_summary(article: object) -> ArticleSummary:
    """CMS article → the fields other services list and link, without the body."""
    payload = _mapping(article, "article")
    tags = payload.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise InvalidPayload("field 'tags' must be a list of strings")
    return {
        "id": _field(payload, "id", (int, str)),
        "slug": _field(payload, "slug", str),
        "title": _field(payload, "title", str),
        "author": _optional_str(payload, "author"),
        "tags": list(tags),
        "published_at": _optional_str(payload, "published_at"),
        "updated_at": _optional_str(payload, "updated_at"),
    }


def pipeline_summary(pipeline: object) -> PipelineSummary:
    """Semaphore pipeline → its identity, branch, commit and outcome."""
    payload = _mapping(pipeline, "pipeline")
    return {
        "id": _field(payload, "ppl_id", str),
        "name": _field(payload, "name", str),
        "branch": _optional_str(payload, "branch_name"),
        "commit_sha": _optional_str(payload, "commit_sha"),
        "state": _optional_str(payload, "state"),
        "result": _optional_str(payload, "result"),
        "created_at": _timestamp(payload, "created_at"),
        "done_at": _timestamp(payload, "done_at"),
    }


def project_summary(project: object) -> ProjectSummary:
    """Semaphore project → its id and name (both under `metadata`)."""
    metadata = _mapping(_mapping(project, "project").get("metadata"), "field 'metadata'")
    return {"id": _field(metadata, "id", str), "name": _field(metadata, "name", str)}
