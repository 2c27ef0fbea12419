"""Path parameters are checked before they reach a URL."""

from __future__ import annotations

import pytest

from apis.errors import InvalidParameter
from apis.paths import segment

HOSTILE = ["../admin", "a/b", "x?y=1", "%2e%2e", "", "a" * 500, "..", ".hidden", "a b", "é", "a#b"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_segments_are_rejected(value: str) -> None:
    """Traversal, separators, encodings, empty and over-long values never pass."""
    with pytest.raises(InvalidParameter):
        segment(value)


@pytest.mark.parametrize("value", ["charizard", "mr-mime", "ho-oh", "6", 6, "type-null"])
def test_ordinary_segments_pass_unchanged(value: str | int) -> None:
    """Real names and ids are used as they are."""
    assert segment(value) == str(value)


@pytest.mark.parametrize("value", [None, 1.5, True, ["a"]])
def test_non_string_segments_are_rejected(value: object) -> None:
    """A wrong type is a clear error, not a str() of it."""
    with pytest.raises(InvalidParameter):
        segment(value)  # type: ignore[arg-type]


def test_unicode_digits_are_not_numbers() -> None:
    """`"²".isdigit()` is True but `int("²")` fails: such input is refused, not crashed on."""
    from apis.client import _parse_retry_after
    from tasks.errors import InvalidInput
    from tasks.pokemon_record import pokemon_ref

    with pytest.raises(InvalidInput):
        pokemon_ref("²")
    assert _parse_retry_after("²") is None
