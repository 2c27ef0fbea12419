"""Semaphore CI, API v1alpha: https://docs.semaphoreci.com/reference/api-v1alpha

Token auth (`Authorization: Token <token>`) and the user agent its docs ask for, both
declared by its registry entry. Lists
are paged by the `link` response header (`rel="next"`), followed here to the last page,
only below the base URL (`ApiClient.follow`: the token goes wherever a link leads) and
at most PAGING_MAX_PAGES pages or PAGING_MAX_ITEMS items (`PagingLimitExceeded`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from apis.client import ApiClient, Payload, expect
from apis.config import UpstreamSettings
from apis.paging import PageBudget
from apis.paths import segment


class SemaphoreSettings(UpstreamSettings):
    """Semaphore's variables (its registry entry names the token and the user agent)."""

    semaphore_base_url: str | None = None
    semaphore_api_token: SecretStr | None = None
    # Beat sends sync_all_projects this often (0: never).
    semaphore_sync_interval: float = Field(300.0, ge=0)


class SemaphoreAPI(ApiClient):
    """Projects and pipelines of one Semaphore organisation."""

    service = "semaphore"

    def probe(self) -> object:
        return self.list_projects()

    def list_projects(self) -> list[dict[str, Any]]:
        """Every project of the organisation."""
        return self._all_pages("/projects", {})

    def list_pipelines(self, project_id: str) -> list[dict[str, Any]]:
        """Every pipeline of a project, across all pages of the `link` header."""
        project = segment(project_id, name="project_id", service=self.service)
        return self._all_pages("/pipelines", {"project_id": project})

    def get_pipeline(self, pipeline_id: str) -> Payload:
        """One pipeline: `{"pipeline": {...}, "blocks": [...]}`."""
        path = f"/pipelines/{segment(pipeline_id, name='pipeline_id', service=self.service)}"
        payload = self.fetch(path)
        expect(
            isinstance(payload.data, dict) and isinstance(payload.data.get("pipeline"), dict),
            "pipeline answer lacks a pipeline object",
            self,
            path,
        )
        return payload

    def _all_pages(self, path: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
        budget = PageBudget(self.config, self.service, path)
        items: list[dict[str, Any]] = []
        payload = self.fetch(path, params=params)
        while True:
            expect(isinstance(payload.data, list), "list answer is not an array", self, path)
            budget.take(len(payload.data))
            items.extend(payload.data)
            next_url = payload.links.get("next")
            if not next_url:
                return items
            payload = self.fetch(self.follow(next_url, where=path))
