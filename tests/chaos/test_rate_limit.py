"""The shared rate limit with real workers: one bucket for every process."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.chaos.conftest import FETCH, pokemon_names, scaled

RATE, BURST = 5, 5


# The limit is the upstream side of a job: the same whichever broker delivered it.
@pytest.mark.broker("redis")
def test_two_workers_together_stay_within_the_rate(deploy, sandbox: Any) -> None:
    """POKEAPI_RATE_LIMIT=5 over two workers: no 1-second window above rate + burst."""
    deployment = deploy(POKEAPI_RATE_LIMIT=str(RATE), POKEAPI_RATE_LIMIT_BURST=str(BURST))
    deployment.start_worker(concurrency=8)
    deployment.start_worker(concurrency=8)
    names = pokemon_names(scaled(30))
    jobs = [deployment.producer.send_task(FETCH, args=[name]) for name in names]
    assert [job.get(timeout=60)["name"] for job in jobs] == names

    times = sorted(sandbox.call_times("pokemon"))
    assert len(times) == len(names)
    fixed = Counter(int(at - times[0]) for at in times)
    assert max(fixed.values()) <= RATE + BURST
    sliding = max(sum(1 for at in times[i:] if at < start + 1) for i, start in enumerate(times))
    assert sliding <= RATE + BURST
    # Not vacuous: the calls were spread out by the limit, not merely few.
    assert times[-1] - times[0] >= (len(names) - BURST) / RATE - 0.5
    assert deployment.failures() == []
    print(
        f"rate limit: sent={len(names)} completed={len(names)} recorded=0 lost=0 "
        f"calls={len(times)} seconds={times[-1] - times[0]:.1f} "
        f"max_per_second_window={max(fixed.values())} max_sliding_second={sliding} "
        f"(limit {RATE} + burst {BURST})"
    )
