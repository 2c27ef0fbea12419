"""The error model: every class pickles with its fields and shows no secret."""

from __future__ import annotations

import pickle

import pytest

from apis import errors

ALL_ERRORS = [
    errors.UpstreamError,
    errors.HeldBack,
    errors.CircuitOpen,
    errors.Throttled,
    errors.NotConfigured,
    errors.InvalidParameter,
    errors.TransportError,
    errors.UpstreamConnectionError,
    errors.UpstreamTimeout,
    errors.HTTPStatusError,
    errors.ServerError,
    errors.RateLimited,
    errors.AuthError,
    errors.NotFound,
    errors.ClientError,
    errors.InvalidResponse,
    errors.UnexpectedRedirect,
    errors.ResponseTooLarge,
    errors.ProtocolViolation,
    errors.PagingLimitExceeded,
]


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_survives_a_pickle_round_trip(cls: type[errors.UpstreamError]) -> None:
    """Celery moves exceptions between processes: class and fields must survive."""
    original = cls("boom", "pokeapi", "GET", "/pokemon/x", 503, "excerpt")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert (copy.message, copy.service, copy.method, copy.path, copy.status) == (
        "boom",
        "pokeapi",
        "GET",
        "/pokemon/x",
        503,
    )
    assert copy.body_excerpt == "excerpt"
    assert str(copy) == str(original)


@pytest.mark.parametrize("cls", ALL_ERRORS)
@pytest.mark.parametrize("retry_after", [None, 0.0, 2.5])
def test_every_error_is_rebuilt_from_its_args_with_its_wait_and_status(
    cls: type[errors.UpstreamError], retry_after: float | None
) -> None:
    """Celery's JSON transport calls the class with `args`: the wait asked for, or the
    class's default (0 for a guard, None otherwise), and its default status come back."""
    original = cls("boom", "pokeapi", "GET", "/x", None, "", retry_after)
    for copy in (cls(*original.args), pickle.loads(pickle.dumps(original))):
        assert copy.retry_after == original.retry_after
        assert copy.status == original.status
    default = 0.0 if issubclass(cls, errors.HeldBack) else None
    assert original.retry_after == (default if retry_after is None else retry_after)
    assert original.status == (429 if cls is errors.RateLimited else None)


def test_rate_limited_keeps_retry_after_through_pickle() -> None:
    """The parsed Retry-After travels with the exception."""
    original = errors.RateLimited("slow down", "cms", "GET", "/articles", 429, "", 7.0)
    copy = pickle.loads(pickle.dumps(original))
    assert copy.retry_after == 7.0
    assert copy.status == 429


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (errors.ServerError("x", status=500), False),
        (errors.ServerError("x", status=502), True),
        (errors.ServerError("x", status=503), True),
        (errors.ServerError("x", status=504), True),
        (errors.RateLimited("x"), True),
        (errors.NotFound("x", status=404), False),
        (errors.AuthError("x", status=401), False),
        (errors.ClientError("x", status=400), False),
        (errors.UpstreamTimeout("x"), True),
        (errors.UpstreamConnectionError("x"), True),
        (errors.InvalidResponse("x"), False),
        (errors.InvalidParameter("x"), False),
        (errors.NotConfigured("x"), False),
    ],
)
def test_only_transient_failures_are_marked_transient(
    error: errors.UpstreamError, transient: bool
) -> None:
    """The retry policy's one question has one answer per failure."""
    assert error.is_transient is transient


def test_invalid_parameter_is_also_a_value_error() -> None:
    """Callers that validate with ValueError catch bad path parameters too."""
    assert issubclass(errors.InvalidParameter, ValueError)
