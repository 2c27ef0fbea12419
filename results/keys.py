"""The Redis key names of the results contract, in one place (documented in README).

One layout serves a single Redis and a Redis Cluster alike. Every script touches the
keys of one result only, and those share a slot: the value keeps the name readers know
(`pokemon:charizard`) and the others carry that whole name as their hash tag
(`meta:{pokemon:charizard}`, `fence:{...}`, `lock:{...}`), so Redis Cluster hashes them
all with the value (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).

The change events and the Pokémon id index cannot share a slot with every value, so
they are split into `events_partitions` partitions: a result's events go to the stream
of its partition (`key_slot(value key) % partitions`, the CRC16 every Redis Cluster
client ships), an id's index entry to the index of the partition of the key that id
would have. With one partition (the default) the names are those of a single Redis
before the cluster layout: `events:results` and `index:pokemon-ids`. With more, they
end in the partition number as a hash tag (`events:results:{3}`), which spreads the
partitions over a cluster's masters.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.crc import key_slot


@dataclass(frozen=True)
class Keys:
    """Key names under an optional prefix that namespaces them in a shared Redis."""

    prefix: str = ""
    #: How many change-event streams (and id indexes) there are: EVENTS_PARTITIONS.
    events_partitions: int = 1

    def result(self, kind: str, ident: str) -> str:
        """The value: exactly the transformed JSON, e.g. `pokemon:charizard`."""
        return f"{self.prefix}{kind}:{ident}"

    def _tagged(self, role: str, kind: str, ident: str) -> str:
        """A key of `role` beside a value, hashed with it: `meta:{pokemon:charizard}`."""
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

    def pokemon_ids_for(self, pokemon_id: str) -> str:
        """The hash that maps `pokemon_id` to a canonical name, so an id job finds its
        result: the index of the partition of `pokemon:<id>`."""
        return self._partitioned("index:pokemon-ids", self.partition("pokemon", pokemon_id))

    @property
    def all_pokemon_ids(self) -> list[str]:
        """Every id index hash, partition 0 first."""
        return [self._partitioned("index:pokemon-ids", p) for p in range(self.events_partitions)]

    @property
    def failures(self) -> str:
        """The stream of permanent job failures (one key: no script shares its slot)."""
        return f"{self.prefix}events:failures"
