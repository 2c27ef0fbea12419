"""`apiworker migrate-keys` on a Redis filled with the layout before hash tags."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from ops.cli import cli
from results.keys import Keys
from results.store import Fetched, Freshness, ResultStore, now
from tests.integration.test_readers import reader

#: The last commit before the tagged layout (its child, 705e30f, introduced it): the code
#: a deployment upgrades from.
BEFORE_TAGS = "f5fa439"
REPO = Path(__file__).resolve().parents[2]

# Run by the old code (its tree first on sys.path), against the Redis of argv[1]: its own
# store writes what its workers wrote (a job's write with an id, a batch of a write and a
# 304, an article list page, a failure record), as its workers would.
OLD_WRITER = """
import sys
import redis
from tasks.keys import Keys
from tasks.store import Fetched, Page, ResultStore, Unchanged, now

client = redis.Redis.from_url(sys.argv[1])
store = ResultStore(client, Keys(), events_maxlen=1000, failures_maxlen=1000)
charizard = {"id": 6, "name": "charizard", "weight": "90.5 kg"}
assert store.write(
    Fetched("pokemon", "charizard", charizard, now(), etag='"c1"', alias="6", max_age=300),
    "old-job",
)
pikachu = {"id": 25, "name": "pikachu", "weight": "6 kg"}
article = {"slug": "hello", "title": "Hello"}
outcomes = store.apply_many(
    [
        Fetched("pokemon", "pikachu", pikachu, now(), etag='"p1"', alias="25"),
        Unchanged("pokemon", "charizard", now(), etag='"c2"'),
        Fetched("article", "hello", article, now(), last_modified="Mon, 01 Dec 2025 00:00:00 GMT"),
    ],
    "old-batch",
)
assert outcomes == ["written", "revalidated", "written"], outcomes
store.write_pages("article", [Page("0:100", '"list"', None, ["hello"], 1, now())])
store.record_failure({
    "task": "tasks.pokemon.fetch_pokemon", "task_id": "old-failed", "args": '["missingno"]',
    "kwargs": "{}", "error": "NotFound", "message": "404", "status": "404", "attempts": "1",
    "failed_at": "2026-12-01T00:00:00+00:00",
})
"""


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
    assert store.ident_for_alias("pokemon", "25") == "pikachu"
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
    assert store.ident_for_alias("pokemon", "6") == "charizard"
    assert not old_layout.exists("index:pokemon-ids")
    assert old_layout.xlen("events:results") == 2


@pytest.fixture(scope="module")
def code_before_tags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The code before the tagged layout, from this repository's history (a checkout
    with that commit: the suite runs from a full clone). The whole tree: a module left
    out would be imported from this version instead, silently."""
    tree = tmp_path_factory.mktemp("before-tags")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BEFORE_TAGS],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def test_results_the_code_before_wrote_are_found_by_every_reader_after_the_migration(
    own_redis: str, code_before_tags: Path
) -> None:
    """The code before the tagged layout (git archive f5fa439) writes with its own
    store; `apiworker migrate-keys` run twice (the second moves nothing); then the
    Python reader and `apiworker result` find every value with its metadata, an id finds
    its name, the old events are followed, the failure is listed, and a new worker's
    claim serves the migrated results as fresh."""
    client = redis.Redis.from_url(own_redis, decode_responses=True)
    client.flushall()
    env = {**os.environ, "PYTHONPATH": str(code_before_tags)}
    written = subprocess.run(
        [sys.executable, "-c", OLD_WRITER, own_redis], cwd=code_before_tags, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert client.exists("meta:pokemon:charizard", "fence:pokemon:charizard") == 2

    assert migrate(own_redis) == {"dry_run": False, "meta": 4, "fence": 3}
    assert migrate(own_redis) == {"dry_run": False}  # idempotent: nothing left to move

    def read(*args: str) -> str:
        done = subprocess.run(
            [*reader("python"), *args], capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "REDIS_URL": own_redis},
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    got = json.loads(read("get", "pokemon", "charizard"))
    assert got["value"] == {"id": 6, "name": "charizard", "weight": "90.5 kg"}
    assert (got["meta"]["task_id"], got["meta"]["etag"]) == ("old-batch", '"c2"')
    followed = [json.loads(line) for line in read("follow", "svc", "r", "--from-start",
                                                  "--count", "4").splitlines()]  # fmt: skip
    assert sorted((e["key"], e["revalidated"]) for e in followed) == [
        ("article:hello", "0"), ("pokemon:charizard", "0"), ("pokemon:charizard", "1"),
        ("pokemon:pikachu", "0"),
    ]  # fmt: skip

    def cli_lines(*args: str) -> list[str]:
        outcome = CliRunner().invoke(cli, list(args), env={"REDIS_URL": own_redis})
        assert outcome.exit_code == 0, outcome.output
        return outcome.stdout.splitlines()

    value, meta = cli_lines("result", "pokemon", "25", "--meta")
    assert json.loads(value)["name"] == "pikachu"
    assert json.loads(meta)["etag"] == '"p1"'
    value, meta = cli_lines("result", "article", "hello", "--meta")
    assert json.loads(value) == {"slug": "hello", "title": "Hello"}
    assert json.loads(meta)["last_modified"] == "Mon, 01 Dec 2025 00:00:00 GMT"
    (failure,) = cli_lines("failures", "list", "--json")
    assert json.loads(failure)["task_id"] == "old-failed"

    store = ResultStore(client, Keys(), events_maxlen=100, failures_maxlen=100)
    fresh = Freshness(3600)
    for kind, ident in (("pokemon", "charizard"), ("pokemon", "pikachu"), ("article", "hello")):
        claim = store.claim(kind, ident, started=None, freshness=fresh, token="t", ttl=5)
        assert claim.state == "fresh", (kind, ident)
    assert store.read_page("article", "0:100") is not None
    # The migrated fences still order writes: a new write takes the next one.
    assert store.write(Fetched("pokemon", "pikachu", {"v": 2}, now()), "new-job")
    assert client.hget(store.keys.meta("pokemon", "pikachu"), "fence") == "2"
    assert client.xrange("events:results")[-1][1]["task_id"] == "new-job"
    client.close()
