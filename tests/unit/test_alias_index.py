"""Alias indexes: a kind's registry entry names its index, and the store and its readers
know only "aliases"; the key other services read stays `index:pokemon-ids`."""

from __future__ import annotations

import pytest
import redis

from results.keys import Keys
from results.store import Fetched, ResultStore, now
from upstreams import BUILT_IN, ResultAlias, Upstream

#: A kind no upstream stores, declared with an alias index of its own.
GADGETS = (("gadget", "index:gadget-skus"),)


def store_of(client: redis.Redis, keys: Keys) -> ResultStore:
    return ResultStore(client, keys, events_maxlen=1000, failures_maxlen=1000)


def gadget(alias: str | None) -> Fetched:
    return Fetched("gadget", "widget", {"name": "widget"}, now(), alias=alias)


def test_the_registry_names_the_index_other_services_read() -> None:
    """PokeAPI's entry declares the index; its key is the documented one, partitioned
    as the change events are."""
    assert ("pokemon", "index:pokemon-ids") in Keys().aliases
    assert Keys().alias_index_for("pokemon", "25") == "index:pokemon-ids"
    split = Keys(events_partitions=4)
    partition = split.partition("pokemon", "25")
    assert split.alias_index_for("pokemon", "25") == f"index:pokemon-ids:{{{partition}}}"
    assert split.all_alias_indexes("pokemon") == [f"index:pokemon-ids:{{{p}}}" for p in range(4)]


def test_a_declared_kind_is_found_by_its_alias(redis_client: redis.Redis) -> None:
    """Any kind whose entry declares an index gets one: the alias maps to the ident."""
    store = store_of(redis_client, Keys("svc:", aliases=GADGETS))
    assert store.write(gadget(alias="sku-9"), "t1")
    assert redis_client.hget("svc:index:gadget-skus", "sku-9") == "widget"
    assert store.ident_for_alias("gadget", "sku-9") == "widget"
    assert store.ident_for_alias("gadget", "sku-0") is None


def test_a_kind_without_an_index_has_no_alias(redis_client: redis.Redis) -> None:
    """Looking one up answers None; a write with one is refused, naming the kind, before
    anything is written."""
    store = store_of(redis_client, Keys(aliases=()))
    assert store.ident_for_alias("gadget", "sku-9") is None
    assert store.keys.all_alias_indexes("gadget") == []
    with pytest.raises(LookupError, match="'gadget' have no alias index"):
        store.write(gadget(alias="sku-9"), "t1")
    assert redis_client.keys("*") == []


def test_an_entry_declares_aliases_only_of_its_own_kinds() -> None:
    """An alias of a kind the upstream does not store is a mistake in the entry."""
    pokeapi = next(entry for entry in BUILT_IN if entry.result_aliases)
    fields = {
        "name": pokeapi.name,
        "client": pokeapi.client,
        "tasks": pokeapi.tasks,
        "base_url_setting": pokeapi.base_url_setting,
    }
    with pytest.raises(ValueError, match="alias of 'gadget'"):
        Upstream(**fields, result_aliases=(ResultAlias("gadget", "index:gadget-skus"),))
