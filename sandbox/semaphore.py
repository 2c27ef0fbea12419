"""Semaphore CI v1alpha impersonation: projects and pipelines behind token auth.

It reproduces the parts a client has to get right against the real service: the
`Authorization: Token ...` header, 30-item pages walked through the `link` header, and
the protobuf-style `{"seconds", "nanos"}` timestamps the pipelines API returns.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sandbox.messages import Request, Response, json_response, query_int

PER_PAGE = 30
_NAMESPACE = uuid.UUID("6f1c2a4e-9d3b-4c5a-8e7f-0a1b2c3d4e5f")
_ORG_ID = str(uuid.uuid5(_NAMESPACE, "organization"))
_OWNER_ID = str(uuid.uuid5(_NAMESPACE, "owner"))
_NEWEST_PIPELINE = 1_740_000_000  # seconds since the epoch, late February 2025


@dataclass(frozen=True)
class _ProjectSeed:
    name: str
    description: str
    created_at: str
    pipelines: int


_PROJECTS = (
    _ProjectSeed(
        "api-layer-worker", "Celery worker feeding upstream data", "2023-03-14T10:02:00Z", 75
    ),
    _ProjectSeed("pokedex-web", "Public front end for the pokedex", "2023-06-01T08:45:00Z", 30),
    _ProjectSeed("infra-terraform", "Shared infrastructure definitions", "2024-01-22T15:30:00Z", 0),
)


def _uuid(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(part) for part in parts)))


def _timestamp(seconds: int) -> dict[str, int]:
    return {"seconds": seconds, "nanos": 0}


def _project(seed: _ProjectSeed) -> dict[str, Any]:
    return {
        "metadata": {
            "name": seed.name,
            "id": _uuid("project", seed.name),
            "owner_id": _OWNER_ID,
            "org_id": _ORG_ID,
            "description": seed.description,
            "created_at": seed.created_at,
        },
        "spec": {
            "repository": {
                "url": f"git@github.com:example-org/{seed.name}.git",
                "owner": "example-org",
                "name": seed.name,
            }
        },
    }


def _pipeline(project_id: str, position: int) -> dict[str, Any]:
    """Pipeline number `position` of a project, counted from the newest (0)."""
    created = _NEWEST_PIPELINE - position * 5400 - (position % 7) * 60
    running = position < 2
    failed = not running and position % 6 == 4
    return {
        "ppl_id": _uuid("pipeline", project_id, position),
        "wf_id": _uuid("workflow", project_id, position),
        "name": "Initial Pipeline" if position % 5 else "Deploy to production",
        "project_id": project_id,
        "branch_name": "main" if position % 3 else f"feature/change-{position}",
        "commit_sha": hashlib.sha1(
            f"{project_id}/{position}".encode(), usedforsecurity=False
        ).hexdigest(),
        "created_at": _timestamp(created),
        "done_at": _timestamp(0 if running else created + 240 + (position % 9) * 30),
        "state": "RUNNING" if running else "DONE",
        "result": "" if running else ("FAILED" if failed else "PASSED"),
        "result_reason": "TEST" if failed else "",
    }


class Semaphore:
    """Serves the Semaphore routes; every request must carry the configured token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.projects = [_project(seed) for seed in _PROJECTS]
        self.pipelines_by_project: dict[str, list[dict[str, Any]]] = {}
        self._pipelines_by_id: dict[str, dict[str, Any]] = {}
        for project, seed in zip(self.projects, _PROJECTS, strict=True):
            project_id = project["metadata"]["id"]
            pipelines = [_pipeline(project_id, position) for position in range(seed.pipelines)]
            self.pipelines_by_project[project_id] = pipelines
            self._pipelines_by_id.update((item["ppl_id"], item) for item in pipelines)

    def authorized(self, request: Request) -> bool:
        supplied = (request.header("authorization") or "").encode()
        return hmac.compare_digest(supplied, f"Token {self.token}".encode())

    def project_list(self, request: Request) -> Response:
        return self._paged(request, self.projects, "projects", {})

    def pipeline_list(self, request: Request) -> Response:
        project_id = request.query.get("project_id")
        if not project_id:
            return json_response(400, {"message": "project_id is required"})
        pipelines = self.pipelines_by_project.get(project_id)
        if pipelines is None:
            return json_response(404, {"message": "Not Found"})
        return self._paged(request, pipelines, "pipelines", {"project_id": project_id})

    def pipeline(self, request: Request, ppl_id: str) -> Response:
        pipeline = self._pipelines_by_id.get(ppl_id)
        if pipeline is None:
            return json_response(404, {"message": "Not Found"})
        return json_response(200, {"pipeline": pipeline, "blocks": []})

    def _paged(
        self,
        request: Request,
        items: list[dict[str, Any]],
        resource: str,
        params: dict[str, str],
    ) -> Response:
        """One page of `items` with Semaphore's `link` header (next, prev, first)."""
        try:
            page = query_int(request, "page")
        except ValueError:
            return json_response(400, {"message": "page must be an integer"})
        page = 1 if page is None else page
        if page < 1:
            return json_response(400, {"message": "page must be >= 1"})
        start = (page - 1) * PER_PAGE
        url = f"{self.base_url}/api/v1alpha/{resource}"

        def link(number: int, rel: str) -> str:
            return f'<{url}?{urlencode({**params, "page": number})}>; rel="{rel}"'

        links = []
        if start + PER_PAGE < len(items):
            links.append(link(page + 1, "next"))
        if page > 1:
            links.append(link(page - 1, "prev"))
        links.append(link(1, "first"))
        headers = (
            ("link", ", ".join(links)),
            ("x-page", str(page)),
            ("x-per-page", str(PER_PAGE)),
            ("x-total-count", str(len(items))),
        )
        return json_response(200, items[start : start + PER_PAGE], headers)
