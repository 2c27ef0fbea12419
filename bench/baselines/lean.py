"""What the lean floors share: the five-field decode and a process per core.

The probes decode only the fields the transform reads, in C (msgspec), as the project's
`apis/pokeapi.py` does; the baselines keep their own copy so that no baseline measures
the project's API layer. The threaded floors run one process per core, the project's
layout, with signals passed on so the bench's SIGTERM stops them all.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable

import msgspec


class _Sprites(msgspec.Struct):
    front_default: str | None = None


class Record(msgspec.Struct):
    """The five fields of a Pokémon record the transform reads."""

    id: int
    name: str
    height: int
    weight: int
    sprites: _Sprites


_decoder = msgspec.json.Decoder(Record)


def decode_record(body: bytes) -> Record:
    """The five fields; the rest of the body is skipped in C."""
    return _decoder.decode(body)


def run_per_core(target: Callable[[], None]) -> None:
    """`target` in one child process per core, until each ends; SIGTERM and SIGINT are
    passed on to them."""
    processes = [multiprocessing.Process(target=target) for _ in range(os.cpu_count() or 1)]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
