"""Read api-layer-worker results from another service, with redis-py.

    python read_results.py get pokemon charizard        # a result and its metadata
    python read_results.py follow my-service reader-1   # change events, in a consumer group

REDIS_URL names the results Redis (default redis://localhost:6379/0), or
REDIS_CLUSTER_NODES (host:port,...) a Redis Cluster; RESULT_KEY_PREFIX and
EVENTS_PARTITIONS are the worker's, if it sets them. Each output line is one JSON object.
"""

import json
import os
import sys
import time

import redis
from redis.cluster import ClusterNode, RedisCluster

PREFIX = os.environ.get("RESULT_KEY_PREFIX", "")
PARTITIONS = int(os.environ.get("EVENTS_PARTITIONS", "1"))
# The change events: one stream, or one per partition (`events:results:{0}`, ...).
STREAMS = (
    [f"{PREFIX}events:results"]
    if PARTITIONS == 1
    else [f"{PREFIX}events:results:{{{p}}}" for p in range(PARTITIONS)]
)


def get(client: redis.Redis, kind: str, ident: str) -> int:
    """Print the stored value of `kind:ident` and its metadata hash; 1 if none is stored."""
    value = client.get(f"{PREFIX}{kind}:{ident}")
    if value is None:
        print(f"no result at {PREFIX}{kind}:{ident}", file=sys.stderr)
        return 1
    # The metadata's hash tag is the whole value key: both live in one cluster slot.
    meta = client.hgetall(f"{PREFIX}meta:{{{PREFIX}{kind}:{ident}}}")
    print(json.dumps({"value": json.loads(value), "meta": meta}))
    return 0


def follow(client: redis.Redis, group: str, consumer: str, count: int, start: str) -> int:
    """Print each event of the results streams once, acknowledging it after handling it.

    Each stream has its own group of that name, read in turn (one stream per command, as
    a cluster needs). The group remembers what it has delivered, so a restarted reader
    goes on where it stopped: it first re-reads the entries it took but never
    acknowledged (id "0"), then takes new ones (">"). `start` is where a new group
    begins: "$" (only new events) or "0" (the whole stream). `count` stops after that
    many events (0: never).
    """
    for stream in STREAMS:
        try:
            client.xgroup_create(stream, group, id=start, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):  # the group exists: keep its position
                raise
    handled, pending = 0, dict.fromkeys(STREAMS, True)
    while not count or handled < count:
        idle = True
        for stream in STREAMS:
            cursor = "0" if pending[stream] else ">"
            replies = client.xreadgroup(group, consumer, {stream: cursor}, count=10)
            entries = replies[0][1] if replies else []
            if pending[stream] and not entries:
                pending[stream] = False  # our unacknowledged entries are done: new ones
                continue
            for entry_id, fields in entries:
                idle = False
                print(json.dumps({"entry_id": entry_id, "stream": stream, **fields}), flush=True)
                client.xack(stream, group, entry_id)
                handled += 1
                if count and handled >= count:
                    return 0
        if idle:
            time.sleep(0.2)  # nothing new on any stream: ask again shortly
    return 0


def connect() -> redis.Redis:
    nodes = os.environ.get("REDIS_CLUSTER_NODES")
    if nodes:
        seeds = [node.rsplit(":", 1) for node in nodes.split(",")]
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, int(port)) for host, port in seeds],
            decode_responses=True,
        )
        return cluster  # type: ignore[return-value]  # it answers the same commands
    return redis.Redis.from_url(
        os.environ.get("REDIS_URL", "redis://localhost:6379/0"), decode_responses=True
    )


def main(argv: list[str]) -> int:
    client = connect()
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
