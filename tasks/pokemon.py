"""PokeAPI jobs. Task names are a public contract: other services send them by name."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from apis import PokeAPI, get_client
from apis.pokeapi import PokeAPISettings
from results.runtime import Runtime, get_runtime
from results.single_flight import FetchOnceJob
from settings import get_settings
from tasks.base import UpstreamTask
from tasks.messages import BULK_HEADERS
from tasks.pokemon_catalog import refresh_batch
from tasks.pokemon_record import PokemonSummary, pokemon_batch, pokemon_ref, pokemon_summary

KIND = "pokemon"


def catalog_settings() -> PokeAPISettings:
    """POKEMON_CATALOG and the batch variables: PokeAPI's own settings, read once."""
    found = get_settings().upstream(PokeAPI.entry())
    assert isinstance(found, PokeAPISettings)
    return found


#: `pokemon:{name}`: a Pokémon by its canonical name, found by its id too.
POKEMON = FetchOnceJob(
    kind=KIND,
    get=PokeAPI.get_pokemon,
    transform=pokemon_summary,
    ident_of=lambda summary: summary["name"],
    alias_of=lambda summary: str(summary["id"]),
)


def fetch_and_store(ref: str, task_id: str, *, runtime: Runtime, client: PokeAPI) -> PokemonSummary:
    """Fetch one Pokémon (unless a fresh result exists), transform it, store it.

    `ref` is a validated lower-case name or a numeric id; an id is stored under the
    canonical name the upstream returns, and remembered so the next id job finds it.
    A stored result is revalidated (a conditional fetch; a 304 brings it forward).
    """
    store = runtime.store
    name = store.ident_for_alias(KIND, ref) if ref.isdigit() else ref
    if name is None:  # an id not seen before: its key is known only after the fetch
        result = POKEMON.stored(ref, client.get_pokemon(ref))
        store.write(result, task_id)
        summary: PokemonSummary = result.value
        return summary
    return POKEMON.run(client, name, task_id, runtime=runtime)


@shared_task(name="tasks.pokemon.fetch_pokemon", base=UpstreamTask, bind=True)
def fetch_pokemon(self: UpstreamTask, name_or_id: str) -> PokemonSummary:
    """Store `pokemon:{name}` = {id, name, image, height, weight}; returns the same."""
    ref = pokemon_ref(name_or_id)
    return fetch_and_store(ref, self.request.id, runtime=get_runtime(), client=get_client(PokeAPI))


# Not part of the public contract: only refresh_catalog sends it.
@shared_task(
    name="tasks.pokemon.fetch_pokemon_batch", base=UpstreamTask, bind=True, internal=True, bulk=True
)
def fetch_pokemon_batch(self: UpstreamTask, names: list[str]) -> dict[str, int]:
    """Internal to `refresh_catalog`: store many names in one job (see tasks.pokemon_catalog)."""
    refs = pokemon_batch(names)
    settings = catalog_settings()
    outcome = refresh_batch(
        refs,
        self.request.id,
        runtime=get_runtime(),
        client=get_client(PokeAPI),
        concurrency=settings.catalog_batch_concurrency,
        defer=lambda name: fetch_pokemon.apply_async((name,), headers=BULK_HEADERS),
    )
    return outcome.summary()


@shared_task(name="tasks.pokemon.refresh_catalog", base=UpstreamTask, bind=True, bulk=True)
def refresh_catalog(self: UpstreamTask) -> dict[str, Any]:
    """Enqueue the configured names (or the whole index): in batches, or one job each."""
    settings = catalog_settings()
    if settings.whole_catalog:
        names = [entry["name"] for entry in get_client(PokeAPI).iter_all_pokemon(page_size=500)]
    else:
        names = [pokemon_ref(name) for name in settings.pokemon_catalog]
    size = settings.catalog_batch_size
    jobs = 0
    with self.app.producer_or_acquire() as producer:
        if size:
            for start in range(0, len(names), size):
                fetch_pokemon_batch.apply_async((names[start : start + size],), producer=producer)
                jobs += 1
        else:
            for name in names:
                fetch_pokemon.apply_async((name,), producer=producer, headers=BULK_HEADERS)
                jobs += 1
    return {"names": len(names), "jobs": jobs}
