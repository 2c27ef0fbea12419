"""Move a results Redis from an earlier key layout to the one `results/keys.py` names.

What moves (the values themselves keep their names, so readers see no change):

- `meta:{kind}:{id}` → `meta:{<value key>}`, and `meta:{kind}-page:{page}` →
  `meta:{{kind}-page}:{page}`: copied with DUMP and RESTORE (they may live on different
  cluster nodes), then the old key deleted. When the new key already exists, a worker of
  the new layout wrote it, and it wins: the old key is only deleted.
- `fence:{kind}:{id}` → `fence:{<value key>}`: the new counter becomes the larger of the
  two (a script on the new key alone), so fences never go back.
- the alias indexes (results/keys.py): every entry goes to the hash of its partition
  (`EVENTS_PARTITIONS`), and hashes of another partition count are emptied.
- `lock:{kind}:{id}`: not moved; a lease lasts seconds and expires by itself. Nor are
  the breakers' and budgets' keys: their state starts afresh under the tagged names.
- the change events: not copied (a copy would get new entry ids and readers would see
  each event twice). A stream no longer written (`events:results` after a move to
  partitions, or the reverse) is left for readers to finish, and reported.

Each key is moved on its own, so the command is idempotent (a second run finds nothing
to move) and resumable (stopped halfway, a run again moves the rest). It is safe while
workers of the new layout run. Workers of the old layout must be stopped first: they
would go on writing the old names, and a run after the last one is gone moves those.
Hand-written: no library moves keys between slots of a Redis Cluster.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from results.keys import Keys

# KEYS: the new fence counter. ARGV: the old counter's value. Raised to it, never lowered.
_RAISE_FENCE = """
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > now then
    redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

_STREAM = re.compile(r"^events:results(:\{\d+\})?$")


def migrate(client: Any, keys: Keys, *, dry_run: bool = False) -> dict[str, int]:
    """Move every key of an earlier layout in `client` (a Redis or a RedisCluster);
    returns how many of each kind were moved (or, with `dry_run`, would be)."""
    moved: Counter[str] = Counter()
    raise_fence = client.register_script(_RAISE_FENCE)
    prefix = keys.prefix
    for raw in list(client.scan_iter(match=f"{_glob(prefix)}meta:*", count=1000)):
        key = _text(raw)
        rest = key[len(prefix) + len("meta:") :]
        if rest.startswith("{"):
            continue  # the new layout already
        kind, _, ident = rest.partition(":")
        if not ident:
            continue
        if kind.endswith("-page"):
            new = keys.page(kind.removesuffix("-page"), ident)
        else:
            new = keys.meta(kind, ident)
        moved["meta"] += 1
        if not dry_run:
            _move(client, key, new)
    for raw in list(client.scan_iter(match=f"{_glob(prefix)}fence:*", count=1000)):
        key = _text(raw)
        rest = key[len(prefix) + len("fence:") :]
        if rest.startswith("{"):
            continue
        kind, _, ident = rest.partition(":")
        if not ident:
            continue
        moved["fence"] += 1
        if not dry_run:
            old = client.get(key)
            if old is not None:
                raise_fence(keys=[keys.fence(kind, ident)], args=[int(old)])
            client.delete(key)
    for kind, index_name in keys.aliases:
        if entries := _move_alias_index(client, keys, kind, index_name, dry_run=dry_run):
            moved["index"] += entries
    streams = set(keys.all_events)
    for raw in list(client.scan_iter(match=f"{_glob(prefix)}events:results*", count=1000)):
        stream = _text(raw)
        if _STREAM.match(stream[len(prefix) :]) and stream not in streams:
            moved["streams left to readers"] += 1
    return dict(moved)


def _move_alias_index(client: Any, keys: Keys, kind: str, index_name: str, *, dry_run: bool) -> int:
    """Move each entry of `kind`'s alias index (any partition count: `<index>` or
    `<index>:{3}`) to the hash of its partition; returns how many moved."""
    moved = 0
    pattern = re.compile(rf"^{re.escape(index_name)}(:\{{\d+\}})?$")
    current = set(keys.all_alias_indexes(kind))
    prefix = keys.prefix
    for raw in list(client.scan_iter(match=f"{_glob(prefix + index_name)}*", count=1000)):
        index = _text(raw)
        if not pattern.match(index[len(prefix) :]):
            continue
        for field, ident in client.hgetall(index).items():
            target = keys.alias_index_for(kind, _text(field))
            if target == index:
                continue
            moved += 1
            if not dry_run:
                client.hset(target, _text(field), _text(ident))
                client.hdel(index, _text(field))
        if index not in current and not dry_run and not client.hlen(index):
            client.delete(index)
    return moved


def _move(client: Any, old: str, new: str) -> None:
    """`old` to `new` (unless `new` exists: it wins), then `old` deleted."""
    if not client.exists(new):
        dumped = client.dump(old)
        if dumped is not None:
            ttl = client.pttl(old)
            client.restore(new, max(ttl, 0), dumped, replace=False)
    client.delete(old)


def _glob(prefix: str) -> str:
    """`prefix` as a SCAN pattern matches it literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
