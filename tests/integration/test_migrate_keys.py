"""`apiworker migrate-keys` on a Redis filled with the layout before hash tags."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from ops.cli import cli
from tasks.keys import Keys
from tasks.store import Fetched, Freshness, ResultStore, now


@pytest.fixture
def old_layout(own_redis: str) -> Iterator[redis.Redis]:
    """Keys as the version before wrote them (README's table of that version): values,
    `meta:{kind}:{id}`, `fence:{kind}:{id}`, `meta:{kind}-page:{page}`, one
    `index:pokemon-ids` and one `events:results`."""
    client = redis.Redis.from_url(own_redis, decode_responses=True)
    client.flushall()
    stored_ms = int(now() * 1000)
    for ident, name in (("6", "charizard"), ("25", "pikachu")):
        client.set(f"pokemon:{name}", orjson.dumps({"id": int(ident), "name": name}))
        client.hset(f"meta:pokemon:{name}", mapping={
            "fetched_at_ms": stored_ms, "stored_ms": stored_ms, "fence": 7,
            "task_id": f"old-{name}", "etag": f'"{name}"',
        })  # fmt: skip
        client.set(f"fence:pokemon:{name}", 7)
        client.hset("index:pokemon-ids", ident, name)
        client.xadd("events:results", {"key": f"pokemon:{name}", "fence": 7})
    client.hset("meta:article-page:0:100", mapping={"ids": "[]", "fetched_at_ms": stored_ms})
    yield client
    client.close()


def migrate(own_redis: str, *args: str, **env: str) -> dict[str, Any]:
    outcome = CliRunner().invoke(cli, ["migrate-keys", *args], env={"REDIS_URL": own_redis, **env})
    assert outcome.exit_code == 0, outcome.output
    answer: dict[str, Any] = json.loads(outcome.stdout)
    return answer


def test_migrated_results_are_found_under_the_new_layout(
    own_redis: str, old_layout: redis.Redis
) -> None:
    """After the move every reader's path finds the old results: the claim sees them
    fresh with their validators, an id finds its name, the CLI prints the metadata, and
    an older fence than the migrated one is still refused. A second run moves nothing."""
    store = ResultStore(old_layout, Keys(), events_maxlen=100, failures_maxlen=100)
    assert (
        store.claim(
            "pokemon", "charizard", started=None, freshness=Freshness(3600), token="t", ttl=5
        ).state
        == "owner"
    )  # before: the metadata is not where the new layout looks
    old_layout.delete(store.keys.lock("pokemon", "charizard"))
    assert migrate(own_redis, "--dry-run") == {"dry_run": True, "meta": 3, "fence": 2}
    assert migrate(own_redis) == {"dry_run": False, "meta": 3, "fence": 2}
    claim = store.claim(
        "pokemon", "charizard", started=None, freshness=Freshness(3600), token="t", ttl=5
    )
    assert (claim.state, claim.value) == ("fresh", {"id": 6, "name": "charizard"})
    assert store.pokemon_name_for_id("25") == "pikachu"
    assert old_layout.hget("meta:{article-page}:0:100", "ids") == "[]"
    assert not old_layout.keys("meta:pokemon:*")
    assert not old_layout.keys("fence:pokemon:*")
    outcome = CliRunner().invoke(
        cli, ["result", "pokemon", "6", "--meta"], env={"REDIS_URL": own_redis}
    )
    assert json.loads(outcome.stdout.splitlines()[1])["task_id"] == "old-charizard"
    late = Fetched("pokemon", "pikachu", {"v": "late"}, now(), fence=6)
    assert not store.write(late, "late")  # the migrated fence 7 still orders it
    assert migrate(own_redis) == {"dry_run": False}


def test_a_move_to_partitions_moves_the_id_index_and_leaves_the_old_stream(
    own_redis: str, old_layout: redis.Redis
) -> None:
    """With EVENTS_PARTITIONS=16 each id goes to its partition's index; the single
    `events:results` is left for its readers to finish, and said so."""
    moved = migrate(own_redis, EVENTS_PARTITIONS="16")
    assert moved == {
        "dry_run": False, "meta": 3, "fence": 2, "index": 2, "streams left to readers": 1,
    }  # fmt: skip
    store = ResultStore(old_layout, Keys("", 16), events_maxlen=100, failures_maxlen=100)
    assert store.pokemon_name_for_id("6") == "charizard"
    assert not old_layout.exists("index:pokemon-ids")
    assert old_layout.xlen("events:results") == 2
