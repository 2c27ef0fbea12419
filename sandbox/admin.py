"""The `/_sandbox` control endpoint: the Python control API over HTTP.

It lets a process that did not start the server (a worker under test, a benchmark
driver, a shell with curl) inject faults, read request counts (with conditional
requests, 304s and body bytes sent), change a record and tune latency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from sandbox.faults import UNSET
from sandbox.messages import Request, Response, json_response

if TYPE_CHECKING:
    from sandbox.server import SandboxServer

PREFIX = "/_sandbox"


def is_admin_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def handle(server: SandboxServer, request: Request) -> Response:
    """Answer one admin request; bad input gets 400 with the reason."""
    action = (request.method, request.path.removeprefix(PREFIX).rstrip("/"))
    try:
        if action == ("POST", "/faults"):
            return _inject(server, _json_object(request.body))
        if action == ("DELETE", "/faults"):
            server.clear_faults()
            return json_response(200, {"ok": True})
        if action == ("GET", "/faults"):
            return json_response(200, {"faults": server.pending_faults()})
        if action == ("GET", "/requests"):
            return json_response(200, _requests(server))
        if request.method == "POST" and action[1].startswith("/records/"):
            return _change(server, action[1].removeprefix("/records/"))
        if action == ("POST", "/reset"):
            server.reset()
            return json_response(200, {"ok": True})
        if action == ("PUT", "/latency"):
            server.latency = _seconds(_json_object(request.body))
            return json_response(200, {"seconds": server.latency})
        if action == ("GET", "/latency"):
            return json_response(200, {"seconds": server.latency})
        if request.method == "PUT" and action[1].startswith("/budget/"):
            return _budget(server, action[1].removeprefix("/budget/"), _json_object(request.body))
        if action == ("GET", "/budget"):
            return json_response(200, {"budgets": server.budget_counts()})
    except ValueError as error:
        return json_response(400, {"error": str(error)})
    return json_response(404, {"error": "unknown admin endpoint"})


def _requests(server: SandboxServer) -> dict[str, Any]:
    """Arrivals per route, conditional ones, 304s and body bytes sent (per route, total)."""
    return {
        "counts": server.call_counts(),
        "total": server.calls(),
        "conditional": server.conditional_calls(),
        "not_modified": server.not_modified(),
        "not_modified_by_route": server.not_modified_counts(),
        "bytes_sent": server.bytes_sent(),
        "bytes_by_route": server.bytes_sent_counts(),
    }


def _change(server: SandboxServer, target: str) -> Response:
    """`POST /_sandbox/records/{route}/{key}`: edit one record (its ETag changes)."""
    route, _, key = target.partition("/")
    if not route or not key:
        raise ValueError("expected /_sandbox/records/{route}/{key}")
    try:
        return json_response(200, server.change_record(route, unquote(key)))
    except KeyError as error:
        return json_response(404, {"error": str(error.args[0])})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as error:
        raise ValueError(f"body is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError("body must be a JSON object")
    return value


def _inject(server: SandboxServer, spec: dict[str, Any]) -> Response:
    params = dict(spec)
    route = params.pop("route", None)
    kind = params.pop("kind", None)
    if not isinstance(route, str) or not isinstance(kind, str):
        raise ValueError("route and kind are required strings")
    times = params.pop("times", UNSET)
    probability = params.pop("probability", None)
    if times is not UNSET and times is not None and not isinstance(times, int):
        raise ValueError("times must be an integer or null")
    if probability is not None and not isinstance(probability, int | float):
        raise ValueError("probability must be a number or null")
    server.inject(route, kind, times=times, probability=probability, **params)
    return json_response(201, {"route": route, "kind": kind})


def _budget(server: SandboxServer, route: str, spec: dict[str, Any]) -> Response:
    """`PUT /_sandbox/budget/{route}` `{"rate": 40, "retry_after": 1}`: 429 above it."""
    rate = spec.get("rate")
    retry_after = spec.get("retry_after")
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ValueError("rate must be a number")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int)
    ):
        raise ValueError("retry_after must be an integer")
    server.set_budget(route, float(rate), retry_after=retry_after)
    return json_response(200, {"budgets": server.budget_counts()})


def _seconds(spec: dict[str, Any]) -> float:
    seconds = spec.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError("seconds must be a non-negative number")
    return float(seconds)
