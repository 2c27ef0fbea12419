"""`python -m bench.enqueue_cost [--jobs 3000] [--rounds 3]`: a producer's CPU per job sent.

What a Python service pays to send fetch jobs by name, measured in this process (its
user + system CPU, `time.process_time`) against a private redis-server; no worker runs,
so only the sending is counted. The ways to send, in interleaved rounds (medians):

- `send_task`: stock Celery, one call per job, as a producer that waits on the result
  sends it (Celery subscribes the producer to the job's result channel on the way);
- `send_task, ignore_result`: the same with `ignore_result=True`, for a producer that
  does not wait (README, "The flow of a job");
- `send_task, ignore_result, one producer`: the same over one producer acquired once
  (`producer=`), as a loop sending many jobs should;
- `group, ignore_result`: Celery's `group` of signatures by name, sent with one call.

Every message is a stock Celery protocol 2 task message; the queue is emptied between
ways. Prints a Markdown table; `--out` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from celery import Celery, group

from bench.harness import notifying_redis
from bench.systems import FETCH_TASK
from ops.producer import producer_app

QUEUE = "pokeapi"


def _send_each(app: Celery, names: Sequence[str]) -> None:
    for name in names:
        app.send_task(FETCH_TASK, args=[name], queue=QUEUE)


def _send_each_ignored(app: Celery, names: Sequence[str]) -> None:
    for name in names:
        app.send_task(FETCH_TASK, args=[name], queue=QUEUE, ignore_result=True)


def _send_one_producer(app: Celery, names: Sequence[str]) -> None:
    with app.producer_or_acquire() as producer:
        for name in names:
            app.send_task(
                FETCH_TASK, args=[name], queue=QUEUE, ignore_result=True, producer=producer
            )


def _send_group(app: Celery, names: Sequence[str]) -> None:
    jobs = group(app.signature(FETCH_TASK, args=[name], queue=QUEUE) for name in names)
    jobs.apply_async(ignore_result=True)


WAYS: dict[str, Callable[[Celery, Sequence[str]], None]] = {
    "send_task": _send_each,
    "send_task, ignore_result": _send_each_ignored,
    "send_task, ignore_result, one producer": _send_one_producer,
    "group, ignore_result": _send_group,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enqueue_cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    names = [f"name-{index}" for index in range(args.jobs)]
    redis_server = notifying_redis()
    redis_server.start()
    cpu: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        app = producer_app(redis_server.url_for(1), redis_server.url_for(2))
        queue = redis_server.client(1)
        _send_each(app, names[:100])  # connections and caches made before measuring
        for _ in range(args.rounds):
            for way, send in WAYS.items():
                queue.flushdb()
                started = time.process_time()
                send(app, names)
                cpu[way].append((time.process_time() - started) * 1000 / len(names))
                assert queue.llen(QUEUE) == len(names), f"{way}: not every job was queued"
        app.close()
    finally:
        redis_server.cleanup()
    medians = {way: round(statistics.median(values), 4) for way, values in cpu.items()}
    base = medians["send_task"]
    head = f"way ({args.jobs} jobs, median of {args.rounds} rounds)"
    print(f"| {head} | producer CPU ms/job | ÷ send_task |")
    print("|---|---|---|")
    for way, value in medians.items():
        each = " / ".join(f"{v:.3f}" for v in cpu[way])
        print(f"| {way} | {value:.3f} ({each}) | {value / base:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"jobs": args.jobs, "cpu_ms_per_job": cpu}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
