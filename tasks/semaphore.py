"""Semaphore CI jobs. Results at `semaphore-pipelines:{project_id}` and `semaphore-projects:all`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

from celery import shared_task

from apis import SemaphoreAPI, get_client
from results.runtime import Runtime, get_runtime
from results.store import Fetched, now
from tasks.base import UpstreamTask
from tasks.errors import InvalidPayload
from tasks.transforms import field, mapping, optional_str
from tasks.validation import matching

PIPELINES = "semaphore-pipelines"
PROJECTS = "semaphore-projects"
_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


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


def checked_project_id(value: object) -> str:
    """A Semaphore project id (a UUID in practice)."""
    return matching(value, "project_id", _PROJECT_ID, "letters, digits and '-'")


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
    return optional_str(payload, key)


def pipeline_summary(pipeline: object) -> PipelineSummary:
    """Semaphore pipeline → its identity, branch, commit and outcome."""
    payload = mapping(pipeline, "pipeline")
    return {
        "id": field(payload, "ppl_id", str),
        "name": field(payload, "name", str),
        "branch": optional_str(payload, "branch_name"),
        "commit_sha": optional_str(payload, "commit_sha"),
        "state": optional_str(payload, "state"),
        "result": optional_str(payload, "result"),
        "created_at": _timestamp(payload, "created_at"),
        "done_at": _timestamp(payload, "done_at"),
    }


def project_summary(project: object) -> ProjectSummary:
    """Semaphore project → its id and name (both under `metadata`)."""
    metadata = mapping(mapping(project, "project").get("metadata"), "field 'metadata'")
    return {"id": field(metadata, "id", str), "name": field(metadata, "name", str)}


def sync_project_pipelines(
    project_id: str, task_id: str, *, runtime: Runtime, client: SemaphoreAPI
) -> list[PipelineSummary]:
    pipelines = [pipeline_summary(item) for item in client.list_pipelines(project_id)]
    runtime.store.write(Fetched(PIPELINES, project_id, pipelines, now()), task_id)
    return pipelines


def sync_projects(task_id: str, *, runtime: Runtime, client: SemaphoreAPI) -> list[ProjectSummary]:
    projects = [project_summary(project) for project in client.list_projects()]
    runtime.store.write(Fetched(PROJECTS, "all", projects, now()), task_id)
    return projects


@shared_task(name="tasks.semaphore.sync_pipelines", base=UpstreamTask, bind=True, bulk=True)
def sync_pipelines(self: UpstreamTask, project_id: str) -> list[PipelineSummary]:
    """Store every pipeline of one project, newest first as the upstream lists them."""
    checked = checked_project_id(project_id)
    return sync_project_pipelines(
        checked, self.request.id, runtime=get_runtime(), client=get_client(SemaphoreAPI)
    )


@shared_task(name="tasks.semaphore.sync_all_projects", base=UpstreamTask, bind=True, bulk=True)
def sync_all_projects(self: UpstreamTask) -> dict[str, Any]:
    """Store the project list and fan out one `sync_pipelines` job per project."""
    projects = sync_projects(
        self.request.id, runtime=get_runtime(), client=get_client(SemaphoreAPI)
    )
    with self.app.producer_or_acquire() as producer:
        for project in projects:
            sync_pipelines.apply_async((project["id"],), producer=producer)
    return {"projects": len(projects)}
