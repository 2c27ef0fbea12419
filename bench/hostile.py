"""`python -m bench.hostile`: how long each hostile answer holds a thread, and how much
memory it costs, against the sandbox upstream in its own process.

For each of the sandbox's hostile faults, one call of the API layer (one attempt, the
timeouts below) is timed, and this process's RSS is sampled every 5 ms during the call:
the table gives the seconds against the total deadline, and the RSS growth over the
call's start against the body cap that applied. docs/reliability.md quotes its output.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apis import CmsAPI, PokeAPI, SemaphoreAPI, errors
from apis.config import ApiSettings
from apis.pokeapi import POKEAPI_RECORD_MAX_BYTES
from bench.harness import SandboxProcess

_PAGE = Path("/proc/self/statm")
_PAGE_SIZE = 4096


def rss() -> int:
    """This process's resident set, in bytes (Linux)."""
    return int(_PAGE.read_text().split()[1]) * _PAGE_SIZE


class PeakRss:
    """Samples RSS every 5 ms while a call runs; `peak` is the highest seen."""

    def __init__(self) -> None:
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())


# (label, route, fault kind, parameters, the call to make)
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("slow headers, a byte per 1.8 s", "pokemon", "slow_headers", {"interval": 1.8}, "record"),
    ("slow chunk-size line, 1.8 s", "pokemon", "slow_chunks", {"interval": 1.8}, "record"),
    (
        "slow drip under gzip, gzip",
        "pokemon",
        "slow_drip",
        {"interval": 1.8, "encodings": "gzip, gzip"},
        "record",
    ),
    ("trailer flood", "pokemon", "trailer_flood", {"seconds": 60}, "record"),
    ("deflate of empty blocks", "pokemon", "deflate_padding", {}, "record"),
    ("20 MB body", "pokemon", "huge", {"size": 20 * 1024 * 1024}, "record"),
    ("gzip, gzip, gzip", "pokemon", "encoding", {"encodings": "gzip, gzip, gzip"}, "record"),
    ("deep JSON (100,000 levels)", "pokemon", "deep_json", {}, "record"),
    ("header flood (1000 lines)", "pokemon", "header_flood", {}, "record"),
    ("off-host next", "pokemon_list", "next_link", {"link": "http://evil.example/x"}, "index"),
    ("endless paging: index", "pokemon_list", "endless_paging", {}, "index"),
    ("endless paging: articles", "articles", "endless_paging", {}, "articles"),
    ("endless paging: pipelines", "pipelines", "endless_paging", {}, "pipelines"),
]


def _calls(settings: ApiSettings) -> dict[str, Callable[[], object]]:
    pokeapi = PokeAPI(PokeAPI.configure(settings))
    cms = CmsAPI(CmsAPI.configure(settings))
    semaphore = SemaphoreAPI(SemaphoreAPI.configure(settings))
    return {
        "record": lambda: pokeapi.get_pokemon("pikachu"),
        "index": lambda: list(pokeapi.iter_all_pokemon(page_size=1000)),
        "articles": lambda: cms.get_all_articles(),
        "pipelines": lambda: semaphore.list_pipelines("any"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    parser.add_argument("--read-timeout", type=float, default=2.0)
    options = parser.parse_args(argv)
    logging.disable(logging.ERROR)  # each case logs its failure once; the table says it
    sandbox = SandboxProcess(0.0, prewarm=False).start()
    try:
        settings = ApiSettings(
            pokeapi_base_url=sandbox.pokeapi_url,
            cms_base_url=sandbox.base_url + "/api/v1",
            semaphore_base_url=sandbox.base_url + "/api/v1alpha",
            semaphore_api_token="sandbox-token",
            http_connect_timeout=options.connect_timeout,
            http_read_timeout=options.read_timeout,
            http_retry_attempts=1,
            redis_url="",
        )
        calls = _calls(settings)
        deadline = settings.http_connect_timeout + 2 * settings.http_read_timeout
        calls["record"]()  # connections, imports and the watchdog thread warmed up
        print(f"total deadline {deadline:.1f} s; a record's body cap {POKEAPI_RECORD_MAX_BYTES}")
        print("| answer | outcome | seconds held | RSS growth MB |")
        print("|---|---|---|---|")
        for label, route, kind, params, call in CASES:
            sandbox.reset()
            sandbox.inject({"route": route, "kind": kind, "times": None, **params})
            before = rss()
            started = time.monotonic()
            with PeakRss() as peak:
                try:
                    calls[call]()
                    outcome = "ok (!)"
                except errors.UpstreamError as exc:
                    outcome = type(exc).__name__
            held = time.monotonic() - started
            grown = (peak.peak - before) / 1e6
            print(f"| {label} | {outcome} | {held:.2f} | {grown:.1f} |")
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
