"""Run the sandbox upstream as a process: `python -m sandbox --port 8900`.

Useful when the client lives in another process (a worker under test, a benchmark); it
serves until SIGINT or SIGTERM and then exits cleanly.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from sandbox.server import SANDBOX_TOKEN, SandboxServer


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Serve fake PokeAPI, CMS and Semaphore APIs with fault injection.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: any free port)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every API response"
    )
    parser.add_argument("--token", default=SANDBOX_TOKEN, help="Semaphore API token to accept")
    parser.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
    parser.add_argument(
        "--prewarm",
        action="store_true",
        help="build and gzip every PokeAPI record before serving (benchmarks; ~400 MB)",
    )
    parser.add_argument(
        "--small-bodies",
        action="store_true",
        help="serve PokeAPI records cut to ~4 KB each, same fields (benchmarks)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="requests/s each upstream route allows, 429 with Retry-After: 1 above it "
        "(default: no limit; PUT /_sandbox/budget/{route} changes one while serving)",
    )
    parser.add_argument(
        "--public-url",
        default=None,
        help="base URL clients reach this server by, used in links "
        "(default: http://HOST:PORT; e.g. http://sandbox:8000 in docker compose)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.latency < 0:
        raise SystemExit("--latency must not be negative")
    if args.budget < 0:
        raise SystemExit("--budget must not be negative")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server = SandboxServer(
        args.host,
        args.port,
        semaphore_token=args.token,
        latency=args.latency,
        seed=args.seed,
        public_url=args.public_url,
        prewarm=args.prewarm,
        small_bodies=args.small_bodies,
        budget=args.budget,
    ).start()
    try:
        print(f"sandbox upstream listening on {server.base_url}", flush=True)
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
