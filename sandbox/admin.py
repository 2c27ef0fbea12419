"""The `/_sandbox` control endpoint: the Python control API over HTTP.

It lets a process that did not start the server (a worker under test, a benchmark
driver, a shell with curl) inject faults, read request counts and tune latency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
            return json_response(200, {"counts": server.call_counts(), "total": server.calls()})
        if action == ("POST", "/reset"):
            server.reset()
            return json_response(200, {"ok": True})
        if action == ("PUT", "/latency"):
            server.latency = _seconds(_json_object(request.body))
            return json_response(200, {"seconds": server.latency})
        if action == ("GET", "/latency"):
            return json_response(200, {"seconds": server.latency})
    except ValueError as error:
        return json_response(400, {"error": str(error)})
    return json_response(404, {"error": "unknown admin endpoint"})


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


def _seconds(spec: dict[str, Any]) -> float:
    seconds = spec.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError("seconds must be a non-negative number")
    return float(seconds)
