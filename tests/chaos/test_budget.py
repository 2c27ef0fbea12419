"""Each upstream's budget with real workers against a sandbox that enforces its own limit
(429 with Retry-After above it): the Done-when of the budget at a small scale (20/s,
100 jobs); docs/performance.md has the full-scale figures from `bench budget`."""

from __future__ import annotations

import time
from typing import Any

from tests.chaos.conftest import FETCH, pokemon_names, scaled
from tests.support.celery_worker import wait_for

RATE = 20
LATENCY = 0.05


def republished(deployment: Any) -> int:
    """Jobs sent back to the broker by their workers: every deferral and Celery retry
    logs one `job retry` line."""
    return sum(worker.log().count("job retry") for worker in deployment.workers)


def moved(deployment: Any) -> int:
    """Jobs moved once from the default queue to their upstream's queue (RabbitMQ)."""
    return sum(worker.log().count("job moved") for worker in deployment.workers)


def refused(sandbox: Any) -> int:
    return int(sandbox.budget_counts().get("pokemon", {}).get("refused", 0))


def test_a_burst_at_the_configured_budget_is_paced_not_refused(deploy, sandbox: Any) -> None:
    """POKEAPI_RATE_LIMIT=20 against an upstream allowing 20/s, 100 on-demand jobs at
    once on two workers of 16 threads (together they could take 1.6 s of tokens at once,
    beyond the 1 s wait bound): all stored, at most 1% of requests answered 429, at most
    1% of jobs re-published, no failure record, and no sooner than the budget allows."""
    sandbox.latency = LATENCY
    sandbox.set_budget("pokemon", RATE)
    deployment = deploy(POKEAPI_RATE_LIMIT=str(RATE))
    deployment.start_worker(concurrency=16)
    deployment.start_worker(concurrency=16)
    names = pokemon_names(scaled(100))
    started = time.monotonic()
    jobs = [deployment.producer.send_task(FETCH, args=[name]) for name in names]
    assert [job.get(timeout=60)["name"] for job in jobs] == names
    elapsed = time.monotonic() - started

    requests = sandbox.calls("pokemon")
    assert refused(sandbox) <= max(1, requests // 100)
    assert republished(deployment) <= max(1, len(names) // 100)
    assert deployment.failures() == []
    floor = len(names) / RATE
    assert elapsed >= floor - 1.5  # the budget paced them (the bucket starts full: 1 s)
    print(
        f"budget configured: jobs={len(names)} seconds={elapsed:.1f} floor={floor:.1f} "
        f"requests={requests} refused_429={refused(sandbox)} "
        f"republished={republished(deployment)} moved={moved(deployment)}"
    )


def test_with_no_rate_configured_the_fleet_learns_the_limit_and_follows_a_cut(
    deploy, sandbox: Any
) -> None:
    """No POKEAPI_RATE_LIMIT, an upstream allowing 20/s that halves it a third of the way
    in without notice: every job is stored, none fails, and the 429s stay a small share:
    the fleet starts slow, so few requests are in flight when the first 429 comes (16
    threads started unbounded met it with all of theirs); later ones only follow the
    cut."""
    sandbox.latency = LATENCY
    sandbox.set_budget("pokemon", RATE)
    deployment = deploy()
    deployment.start_worker(concurrency=8)
    deployment.start_worker(concurrency=8)
    names = pokemon_names(scaled(100))
    jobs = [deployment.producer.send_task(FETCH, args=[name]) for name in names]
    wait_for(lambda: sum(job.ready() for job in jobs) >= len(names) // 3, timeout=60)
    sandbox.set_budget("pokemon", RATE / 2)
    assert [job.get(timeout=90)["name"] for job in jobs] == names

    requests = sandbox.calls("pokemon")
    assert deployment.failures() == []
    assert refused(sandbox) <= max(3, requests * 0.05)
    print(
        f"budget learnt: jobs={len(names)} requests={requests} "
        f"refused_429={refused(sandbox)} republished={republished(deployment)}"
    )


def test_on_demand_jobs_go_ahead_of_a_catalog_refresh(deploy, sandbox: Any) -> None:
    """A catalog refresh of 200 names uses the whole 20/s budget; 5 on-demand jobs sent
    during it are each stored within 2 s, ahead of the bulk batches' calls. Batches of
    10: more than each worker's room for the upstream, so the batches fill it (on
    RabbitMQ an on-demand job moved for that lands behind them in the upstream's queue)."""
    sandbox.latency = LATENCY
    sandbox.set_budget("pokemon", RATE)
    catalog = pokemon_names(200)
    deployment = deploy(
        POKEAPI_RATE_LIMIT=str(RATE),
        POKEMON_CATALOG=",".join(catalog[5:]),
        CATALOG_BATCH_SIZE="10",
    )
    deployment.start_worker(concurrency=8)
    deployment.start_worker(concurrency=8)
    refresh = deployment.producer.send_task("tasks.pokemon.refresh_catalog")
    assert refresh.get(timeout=30)["names"] == len(catalog) - 5
    wait_for(lambda: sandbox.calls("pokemon") >= 40, timeout=30)  # the budget binds
    waits = []
    for name in catalog[:5]:
        sent = time.monotonic()
        deployment.producer.send_task(FETCH, args=[name]).get(timeout=30)
        waits.append(time.monotonic() - sent)
    assert sandbox.calls("pokemon") < len(catalog) - 20, waits  # the refresh was still going
    assert max(waits) <= 2.0, waits
    assert deployment.failures() == []
    print(f"on-demand during a refresh: waits={[round(w, 2) for w in waits]}")


def test_another_upstream_keeps_its_latency_while_one_has_a_backlog(deploy, sandbox: Any) -> None:
    """PokeAPI at 10/s with a backlog of 200 on-demand jobs in the default queue: CMS
    jobs sent meanwhile are each done within 2 s (they would wait for threads held by
    pokeapi jobs sleeping on the budget), and the backlog waits in the broker, none of
    it re-published (on RabbitMQ each over-budget job is moved once from the default
    queue to its upstream's queue, which is not a re-publish: worker/amqp_admission.py)."""
    sandbox.latency = LATENCY
    sandbox.set_budget("pokemon", RATE / 2)
    deployment = deploy(POKEAPI_RATE_LIMIT=str(RATE / 2))
    deployment.start_worker(concurrency=4)
    backlog = [deployment.producer.send_task(FETCH, args=[n]) for n in pokemon_names(200)]
    wait_for(lambda: sandbox.calls("pokemon") >= 20, timeout=30)  # the budget binds
    waits = []
    for number in range(1, 6):
        sent = time.monotonic()
        deployment.producer.send_task("tasks.cms.sync_article", args=[f"article-{number:02d}"]).get(
            timeout=30
        )
        waits.append(time.monotonic() - sent)
    assert sum(job.ready() for job in backlog) < len(backlog) - 50  # still a backlog
    assert max(waits) <= 2.0, waits
    assert republished(deployment) <= len(backlog) // 100
    assert deployment.failures() == []
    print(
        f"other upstream during a backlog: waits={[round(w, 2) for w in waits]} "
        f"republished={republished(deployment)} moved={moved(deployment)}"
    )
