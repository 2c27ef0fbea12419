"""Content-Encoding decoding fed one raw read at a time, so a deadline is checked between.

urllib3's `read1(decode_content=True)` keeps reading raw bytes until its decoder has some
output. A gzip body dripped a byte at a time has none for its first ~70 bytes, so the
client's total deadline went unchecked for seconds per attempt (3.7 s against a 0.6 s
deadline in tests/chaos/test_hostile_upstream.py). Fed each raw read, the client checks
its deadline after every one. Only the encodings the client asks for (gzip, deflate) are
decoded here; any other is left to urllib3.
"""

from __future__ import annotations

import zlib

from urllib3.exceptions import DecodeError

_GZIP = 16 + zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS


class Inflater:
    """Decodes a gzip or deflate body from raw reads, at most `limit` bytes per read."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._z = zlib.decompressobj(wbits)
        # deflate is sent zlib-wrapped or raw: until the first output, keep what came
        # in so it can be decoded again as raw deflate (what urllib3 does too).
        self._undecided: bytes | None = b"" if wbits == zlib.MAX_WBITS else None

    @classmethod
    def for_encoding(cls, content_encoding: str) -> Inflater | None:
        """An inflater for gzip or deflate; None for any other encoding (or none)."""
        encoding = content_encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            return cls(_GZIP)
        if encoding == "deflate":
            return cls(zlib.MAX_WBITS)
        return None

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
            self._undecided = None if out else self._undecided + data
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
