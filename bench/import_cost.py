"""What a worker's imports cost its memory: `python -m bench.import_cost [--rounds 3]`.

A worker process's resident memory is mostly its start-up heap. This measures, each in a
fresh interpreter, the resident MiB one package adds to a process that has already
imported what a stock Celery worker of the lean job runs (`bench.baselines.celery_floor`
and what a Celery worker loads as it starts); the last row is the project's worker
modules as `python -m worker` loads them. Medians of `--rounds` interpreters each;
prints one Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from ops.processes.children import REPO_ROOT

#: The Celery floor's module (its clients, urllib3, msgspec, orjson), then what a Celery
#: worker loads as it starts: its consumer, the threads pool, the tracer and kombu's
#: Redis transport.
FLOOR = (
    "bench.baselines.celery_floor",
    "celery.app.trace",
    "celery.bin.worker",
    "celery.concurrency.thread",
    "celery.worker.consumer",
    "kombu.transport.redis",
)
#: The floor reads these at import; nothing connects to them.
FLOOR_ENVIRONMENT = {
    "POKEAPI_BASE_URL": "http://127.0.0.1:9",
    "CELERY_BROKER_URL": "redis://127.0.0.1:9/1",
    "REDIS_URL": "redis://127.0.0.1:9/0",
}
CANDIDATES = {
    "pydantic-core": ("pydantic_core",),
    "pydantic-settings (with pydantic's model machinery)": ("pydantic_settings",),
    "prometheus-client": ("prometheus_client",),
    "tenacity": ("tenacity",),
    "the project's worker (`python -m worker`'s imports)": ("worker.app", "worker.__main__"),
}
_PROBE = """
import importlib, os, sys
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
saved = dict(os.environ)
os.environ.update({environment!r})  # for the floor's import only
for name in {floor!r}:
    importlib.import_module(name)
os.environ.clear()
os.environ.update(saved)
before, modules = rss(), len(sys.modules)
for name in {names!r}:
    importlib.import_module(name)
print(rss() - before, len(sys.modules) - modules)
"""


def added(names: tuple[str, ...]) -> tuple[float, int]:
    """(resident MiB, modules) that importing `names` adds over the floor's imports."""
    script = _PROBE.format(floor=FLOOR, environment=FLOOR_ENVIRONMENT, names=names)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
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
