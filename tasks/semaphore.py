"""Semaphore CI jobs. Results at `semaphore-pipelines:{project_id}` and `semaphore-projects:all`."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from apis import SemaphoreAPI, get_client
from results.runtime import Runtime, get_runtime
from results.store import Fetched, now
from tasks import validation
from tasks.base import UpstreamTask
from tasks.transforms import (
    PipelineSummary,
    ProjectSummary,
    pipeline_summary,
    project_summary,
)

PIPELINES = "semaphore-pipelines"
PROJECTS = "semaphore-projects"


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
    checked = validation.project_id(project_id)
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
