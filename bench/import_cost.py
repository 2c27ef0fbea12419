"""What a worker's imports cost its memory: `python -m bench.import_cost [--rounds 3]`.

A worker process's resident memory is mostly its start-up heap. This measures, each in a
fresh interpreter, the resident MiB one package adds to a process that has already
imported what a stock Celery worker of the lean job runs (`bench.baselines.celery_floor`:
Celery's worker, consumer, threads pool and trace, kombu's Redis transport, redis-py,
urllib3, msgspec, orjson); the last row is the project's worker modules as `python -m
worker` loads them. Medians of `--rounds` interpreters each; prints one Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from ops.processes.children import REPO_ROOT

#: What the Celery floor imports before its first job.
FLOOR = (
    "celery",
    "celery.app.trace",
    "celery.bin.worker",
    "celery.concurrency.thread",
    "celery.worker.consumer",
    "kombu.transport.redis",
    "msgspec",
    "orjson",
    "redis",
    "urllib3",
)
CANDIDATES = {
    "pydantic-core": ("pydantic_core",),
    "pydantic-settings (with pydantic's model machinery)": ("pydantic_settings",),
    "prometheus-client": ("prometheus_client",),
    "tenacity": ("tenacity",),
    "the project's worker (`python -m worker`'s imports)": ("worker.app", "worker.__main__"),
}
_PROBE = """
import importlib, sys
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
for name in {floor!r}:
    importlib.import_module(name)
before, modules = rss(), len(sys.modules)
for name in {names!r}:
    importlib.import_module(name)
print(rss() - before, len(sys.modules) - modules)
"""


def added(names: tuple[str, ...]) -> tuple[float, int]:
    """(resident MiB, modules) that importing `names` adds over the floor's imports."""
    script = _PROBE.format(floor=FLOOR, names=names)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interpreters per row")
    args = parser.parse_args()
    print("| imported over the Celery floor's imports | resident MiB added | modules added |")
    print("|---|---|---|")
    for label, names in CANDIDATES.items():
        runs = [added(names) for _ in range(args.rounds)]
        mib = statistics.median(run[0] for run in runs)
        print(f"| {label} | {mib:.1f} | {runs[0][1]} |")


if __name__ == "__main__":
    main()
