"""The Redis key names of the results contract, in one place (documented in README).

One layout serves a single Redis and a Redis Cluster alike. Every script touches the
keys of one result only, and those share a slot: the value keeps the name readers know
(`{kind}:{ident}`) and the others carry that whole name as their hash tag
(`meta:{{kind}:{ident}}`, `fence:{...}`, `lock:{...}`), so Redis Cluster hashes them
all with the value (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).

The change events and the alias indexes (a kind whose results another ident finds too
names its index in its upstream's registry entry, `upstreams.ResultAlias`) cannot share
a slot with every value, so they are split into `events_partitions` partitions: a
result's events go to the stream of its partition (`key_slot(value key) % partitions`,
the CRC16 every Redis Cluster client ships), an alias's index entry to the index of the
partition of the key that alias would have. With one partition (the default) the names
are those of a single Redis before the cluster layout: `events:results` and the index's
own name. With more, they end in the partition number as a hash tag
(`events:results:{3}`), which spreads the partitions over a cluster's masters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.crc import key_slot

from upstreams import all_upstreams


def registered_aliases() -> tuple[tuple[str, str], ...]:
    """(kind, index name) of every kind whose results another ident finds too, as the
    registry's entries declare them (`upstreams.ResultAlias`)."""
    found: dict[str, str] = {}
    for upstream in all_upstreams():
        for alias in upstream.result_aliases:
            if found.setdefault(alias.kind, alias.index) != alias.index:
                raise ValueError(f"two alias indexes for the kind {alias.kind!r}")
    if len(set(found.values())) != len(found):
        raise ValueError(f"two kinds share an alias index: {found}")
    return tuple(found.items())


@dataclass(frozen=True)
class Keys:
    """Key names under an optional prefix that namespaces them in a shared Redis."""

    prefix: str = ""
    #: How many change-event streams (and partitions of each alias index) there are:
    #: EVENTS_PARTITIONS.
    events_partitions: int = 1
    #: (kind, index name) of the kinds whose results another ident finds too: the
    #: registry's, unless given.
    aliases: tuple[tuple[str, str], ...] = field(default_factory=registered_aliases)

    def result(self, kind: str, ident: str) -> str:
        """The value: exactly the transformed JSON, `{kind}:{ident}`."""
        return f"{self.prefix}{kind}:{ident}"

    def _tagged(self, role: str, kind: str, ident: str) -> str:
        """A key of `role` beside a value, hashed with it: `meta:{{kind}:{ident}}`."""
        return f"{self.prefix}{role}:{{{self.result(kind, ident)}}}"

    def meta(self, kind: str, ident: str) -> str:
        """A hash beside the value: fence, stored_ms, fetched_at_ms, task_id, validators."""
        return self._tagged("meta", kind, ident)

    def page(self, kind: str, page: str) -> str:
        """The validators and ids of one list page, for a conditional fetch of it.

        Every page of a kind shares the tag `{kind-page}`: they are written together."""
        return f"{self.prefix}meta:{{{kind}-page}}:{page}"

    def fence(self, kind: str, ident: str) -> str:
        """The fence counter of one result: each fetch of it takes the next number."""
        return self._tagged("fence", kind, ident)

    def lock(self, kind: str, ident: str) -> str:
        """The single-flight lock of one result."""
        return self._tagged("lock", kind, ident)

    def partition(self, kind: str, ident: str) -> int:
        """The event partition of one result: its value key's slot modulo the count."""
        return key_slot(self.result(kind, ident).encode()) % self.events_partitions

    def _partitioned(self, name: str, partition: int) -> str:
        if self.events_partitions == 1:
            return f"{self.prefix}{name}"
        return f"{self.prefix}{name}:{{{partition}}}"

    def events_for(self, kind: str, ident: str) -> str:
        """The stream that gets the change events of one result."""
        return self._partitioned("events:results", self.partition(kind, ident))

    def event_fences_for(self, kind: str, ident: str) -> str:
        """The hash beside a result's event stream: value key -> the highest fence whose
        event that key has had (so an event is appended once, never out of order)."""
        return self._partitioned("events:last-fence", self.partition(kind, ident))

    @property
    def all_events(self) -> list[str]:
        """Every change-event stream, partition 0 first: a reader follows each of them."""
        return [self._partitioned("events:results", p) for p in range(self.events_partitions)]

    def alias_index(self, kind: str) -> str | None:
        """The name of `kind`'s alias index (unprefixed, unpartitioned), or None when
        its results have no alias."""
        return next((index for known, index in self.aliases if known == kind), None)

    def alias_index_for(self, kind: str, alias: str) -> str:
        """The hash that maps `alias` to the ident `kind`'s result is stored under, so a
        job given the alias finds it: the index of the partition of `{kind}:{alias}`."""
        index = self.alias_index(kind)
        if index is None:
            raise LookupError(f"results of kind {kind!r} have no alias index")
        return self._partitioned(index, self.partition(kind, alias))

    def all_alias_indexes(self, kind: str) -> list[str]:
        """Every partition of `kind`'s alias index, partition 0 first (none without one)."""
        index = self.alias_index(kind)
        if index is None:
            return []
        return [self._partitioned(index, p) for p in range(self.events_partitions)]

    @property
    def failures(self) -> str:
        """The stream of permanent job failures (one key: no script shares its slot)."""
        return f"{self.prefix}events:failures"
