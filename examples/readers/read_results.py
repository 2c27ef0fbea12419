"""Read api-layer-worker results from another service, with redis-py.

    python read_results.py get pokemon charizard        # a result and its metadata
    python read_results.py follow my-service reader-1   # change events, in a consumer group

REDIS_URL names the results Redis (default redis://localhost:6379/0); RESULT_KEY_PREFIX
is the worker's key prefix, if it has one. Each output line is one JSON object.
"""

import json
import os
import sys

import redis

PREFIX = os.environ.get("RESULT_KEY_PREFIX", "")
EVENTS = f"{PREFIX}events:results"


def get(client: redis.Redis, kind: str, ident: str) -> int:
    """Print the stored value of `kind:ident` and its metadata hash; 1 if none is stored."""
    value = client.get(f"{PREFIX}{kind}:{ident}")
    if value is None:
        print(f"no result at {PREFIX}{kind}:{ident}", file=sys.stderr)
        return 1
    meta = client.hgetall(f"{PREFIX}meta:{kind}:{ident}")
    print(json.dumps({"value": json.loads(value), "meta": meta}))
    return 0


def follow(client: redis.Redis, group: str, consumer: str, count: int, start: str) -> int:
    """Print each event of the results stream once, acknowledging it after handling it.

    The group remembers what it has delivered, so a restarted reader goes on where it
    stopped: it first re-reads the entries it took but never acknowledged (id "0"), then
    waits for new ones (">"). `start` is where a new group begins: "$" (only new events)
    or "0" (the whole stream). `count` stops after that many events (0: never).
    """
    try:
        client.xgroup_create(EVENTS, group, id=start, mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):  # the group exists: keep its position
            raise
    handled, pending = 0, True
    while not count or handled < count:
        cursor = "0" if pending else ">"
        replies = client.xreadgroup(group, consumer, {EVENTS: cursor}, count=10, block=5000)
        entries = replies[0][1] if replies else []
        if pending and not entries:
            pending = False  # our unacknowledged entries are done: now the new ones
            continue
        for entry_id, fields in entries:
            print(json.dumps({"entry_id": entry_id, **fields}), flush=True)
            client.xack(EVENTS, group, entry_id)
            handled += 1
            if count and handled >= count:
                break
    return 0


def main(argv: list[str]) -> int:
    client = redis.Redis.from_url(
        os.environ.get("REDIS_URL", "redis://localhost:6379/0"), decode_responses=True
    )
    if len(argv) == 3 and argv[0] == "get":
        return get(client, argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "follow":
        count = int(argv[argv.index("--count") + 1]) if "--count" in argv else 0
        start = "0" if "--from-start" in argv else "$"
        return follow(client, argv[1], argv[2], count, start)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
