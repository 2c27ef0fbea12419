"""Body decoding fed one raw read at a time: gzip, both kinds of deflate, bounded output."""

from __future__ import annotations

import gzip
import zlib

import pytest
from urllib3.exceptions import DecodeError

from apis.inflate import Inflater

BODY = b'{"name": "pikachu", "moves": [' + b'"thunder", ' * 500 + b'"tail"]}'


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def decode_bytewise(inflater: Inflater, encoded: bytes) -> tuple[bytes, int]:
    """Feed one byte per read, as a dripping upstream sends it; count empty reads."""
    out, empty = b"", 0
    for index in range(len(encoded)):
        chunk = inflater.feed(encoded[index : index + 1], 10**6)
        empty += not chunk
        out += chunk
    return out + inflater.flush(), empty


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),
        ("gzip", lambda data: gzip.compress(data[:100]) + gzip.compress(data[100:])),
    ],
)
def test_each_encoding_decodes_one_byte_at_a_time(encoding, encode) -> None:
    """Every read returns at once, many with nothing decoded yet; the whole body comes out."""
    inflater = Inflater.for_encoding(encoding)
    assert inflater is not None
    out, empty = decode_bytewise(inflater, encode(BODY))
    assert out == BODY
    assert empty > 0  # reads that gave no output returned anyway: the deadline is checked


def test_other_encodings_have_no_inflater() -> None:
    """Identity, none, or an encoding the client did not ask for: no inflater (and
    `Decoding` refuses the last, tests/unit/test_hostile_parsing.py)."""
    assert [Inflater.for_encoding(value) for value in ("", "identity", "br")] == [None] * 3


def test_output_per_read_is_bounded_by_the_limit() -> None:
    """A small compressed read cannot expand past the limit (a decompression bomb)."""
    inflater = Inflater.for_encoding("gzip")
    assert inflater is not None
    assert len(inflater.feed(gzip.compress(b"\0" * 10_000_000), 1001)) == 1001


def test_a_corrupt_body_is_a_decode_error() -> None:
    """Garbage under a gzip header raises what urllib3 raises, mapped to InvalidResponse."""
    inflater = Inflater.for_encoding("gzip")
    assert inflater is not None
    with pytest.raises(DecodeError):
        inflater.feed(b"\x1f\x8b\x08\x00garbage-not-deflate-data", 1000)
