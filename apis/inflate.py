"""Content-Encoding decoding fed one raw read at a time, bounded at every stage.

urllib3's `read1(decode_content=True)` keeps reading raw bytes until its decoder has some
output. A gzip body dripped a byte at a time has none for its first ~70 bytes, so the
client's total deadline went unchecked for seconds per attempt (3.7 s against a 0.6 s
deadline in tests/chaos/test_hostile_upstream.py). Fed each raw read, the client checks
its deadline after every one.

Only gzip, x-gzip, deflate and identity are accepted, stacked (`gzip, gzip`) at most
`MAX_STAGES` deep; any other coding is refused rather than handed to urllib3, which
would decode it whole. Every stage counts what it passes on against the body cap, so a
stack of bombs stops at the cap at its first stage, and the compressed bytes themselves
count too: a deflate stream of endless empty blocks inflates to nothing, forever.
"""

from __future__ import annotations

import functools
import zlib

from urllib3.exceptions import DecodeError

_GZIP = 16 + zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS
_CODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": zlib.MAX_WBITS}
# Codings stacked deeper than this are refused (urllib3 allows 5; one is what servers send).
MAX_STAGES = 2
# A zlib header is 2 bytes: a stream still undecided (zlib-wrapped or raw deflate) after
# this much input is taken as zlib-wrapped, and no more of it is kept for a second try.
_UNDECIDED_LIMIT = 64 * 1024


@functools.lru_cache(maxsize=64)
def _stages(content_encoding: str) -> tuple[int, ...]:
    """The wbits of each stage, innermost first (cached: nearly every answer says "gzip",
    and only a few distinct values fit, so a hostile upstream cannot grow it)."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    unknown = [c for c in codings if c not in _CODINGS]
    if unknown:
        raise UnsupportedEncoding(f"unsupported Content-Encoding {unknown[0][:40]!r}")
    if len(codings) > MAX_STAGES:
        raise UnsupportedEncoding(
            f"Content-Encoding stacks {len(codings)} codings (at most {MAX_STAGES})"
        )
    # Applied in the listed order, so decoded in the reverse one (RFC 9110 8.4).
    return tuple(_CODINGS[c] for c in reversed(codings))


class UnsupportedEncoding(ValueError):
    """A Content-Encoding the client did not ask for, or stacked too deep."""


class OverCap(ValueError):
    """One stage of the decoding (or the raw body) passed the body cap."""


class Inflater:
    """Decodes one gzip or deflate layer from raw reads, at most `limit` bytes per read."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._z = zlib.decompressobj(wbits)
        # deflate is sent zlib-wrapped or raw: until the first output, keep what came
        # in so it can be decoded again as raw deflate (what urllib3 does too).
        self._undecided: bytes | None = b"" if wbits == zlib.MAX_WBITS else None

    @classmethod
    def for_encoding(cls, content_encoding: str) -> Inflater | None:
        """An inflater for one gzip or deflate coding; None for any other (or none)."""
        wbits = _CODINGS.get(content_encoding.strip().lower())
        return None if wbits is None else cls(wbits)

    def feed(self, data: bytes, limit: int) -> bytes:
        """The decoded bytes of `data`, at most `limit` of them (beyond is over the cap)."""
        try:
            out = self._decompress(data, limit)
        except zlib.error as exc:
            if self._undecided is None:
                raise DecodeError(f"body could not be decompressed: {exc}") from exc
            seen, self._undecided = self._undecided + data, None
            self._z = zlib.decompressobj(_RAW_DEFLATE)
            return self.feed(seen, limit)
        if self._undecided is not None:
            kept = self._undecided + data
            self._undecided = None if out or len(kept) > _UNDECIDED_LIMIT else kept
        return out

    def flush(self) -> bytes:
        return self._z.flush()

    def _decompress(self, data: bytes, limit: int) -> bytes:
        out = self._z.decompress(data, max(1, limit))
        # A gzip body may hold several members one after another.
        while self._z.eof and self._z.unused_data and len(out) < limit:
            rest = self._z.unused_data
            self._z = zlib.decompressobj(self._wbits)
            out += self._z.decompress(rest, limit - len(out))
        return out


class Decoding:
    """The whole Content-Encoding of one body: its stages, each bounded by `cap`.

    `feed` takes one raw read and returns what the last stage gave (often nothing yet);
    it raises `OverCap` as soon as the raw bytes or any stage's output pass `cap`, and
    `DecodeError` on a corrupt stream.
    """

    def __init__(self, stages: list[Inflater], cap: int) -> None:
        self._stages = stages
        self._cap = cap
        # Bytes in (index 0) and out of each stage so far.
        self._totals = [0] * (len(stages) + 1)

    @classmethod
    def for_header(cls, content_encoding: str, cap: int) -> Decoding:
        """The decoding a `Content-Encoding` header names, outermost coding last.

        Raises `UnsupportedEncoding` for a coding other than gzip, x-gzip, deflate and
        identity, or for more than `MAX_STAGES` of them.
        """
        return cls([Inflater(wbits) for wbits in _stages(content_encoding)], cap)

    @property
    def identity(self) -> bool:
        return not self._stages

    def feed(self, data: bytes) -> bytes:
        self._count(0, data)
        for index, stage in enumerate(self._stages, start=1):
            if not data:
                break
            data = stage.feed(data, self._cap - self._totals[index] + 1)
            self._count(index, data)
        return data

    def flush(self) -> bytes:
        """What the stages still hold, once the raw body has ended."""
        data = b""
        for index, stage in enumerate(self._stages, start=1):
            if data:
                data = stage.feed(data, self._cap - self._totals[index] + 1)
                self._count(index, data)
            rest = stage.flush()
            self._count(index, rest)
            data += rest
        return data

    def _count(self, index: int, data: bytes) -> None:
        self._totals[index] += len(data)
        if self._totals[index] > self._cap:
            where = "body" if index == 0 else f"decoding stage {index}"
            raise OverCap(f"{where} exceeds the cap of {self._cap} bytes")
