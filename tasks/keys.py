"""The Redis key names of the results contract, in one place (documented in README)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under an optional prefix that namespaces them in a shared Redis."""

    prefix: str = ""

    def result(self, kind: str, ident: str) -> str:
        """The value: exactly the transformed JSON, e.g. `pokemon:charizard`."""
        return f"{self.prefix}{kind}:{ident}"

    def meta(self, kind: str, ident: str) -> str:
        """A hash beside the value: fence, stored_ms, fetched_at_ms, task_id, validators."""
        return f"{self.prefix}meta:{kind}:{ident}"

    def page(self, kind: str, page: str) -> str:
        """The validators and ids of one list page, for a conditional fetch of it."""
        return f"{self.prefix}meta:{kind}-page:{page}"

    def fence(self, kind: str, ident: str) -> str:
        """The fence counter of one result: each fetch of it takes the next number."""
        return f"{self.prefix}fence:{kind}:{ident}"

    def lock(self, kind: str, ident: str) -> str:
        """The single-flight lock of one result."""
        return f"{self.prefix}lock:{kind}:{ident}"

    @property
    def pokemon_ids(self) -> str:
        """A hash from Pokémon id to canonical name, so an id job can find its result."""
        return f"{self.prefix}index:pokemon-ids"

    @property
    def events(self) -> str:
        """The stream every result write appends to."""
        return f"{self.prefix}events:results"

    @property
    def failures(self) -> str:
        """The stream of permanent job failures."""
        return f"{self.prefix}events:failures"
