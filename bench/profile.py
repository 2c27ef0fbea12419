"""Where a job's CPU goes: py-spy samples of the real worker during the cold scenario.

A sampling profiler attached from outside sees everything the worker does for a job,
Celery's and kombu's share included, which profiling the task function in-process would
miss. py-spy is a measuring tool, not a dependency: `pip install py-spy` into the venv
to use `python -m bench --profile`; without it the run says so and skips the profile.

Only on-CPU samples are kept (py-spy drops idle threads), so shares of samples are shares
of the worker's CPU time and, multiplied by the measured CPU per job, milliseconds per job.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.harness import REPO_ROOT, SampledWorker

# Exclusive buckets: a sample goes to the first bucket that matches its leaf-most
# frame with a known file, walking from the leaf towards the root.
PACKAGES: list[tuple[str, tuple[str, ...]]] = [
    ("JSON decode of the body (orjson, in ApiClient._decode)", ("_decode (apis/client.py",)),
    ("gzip inflate + body read (urllib3)", ("urllib3/response.py", "/gzip.py", "/zlib")),
    (
        "HTTP client other (requests, urllib3, http.client)",
        ("requests/", "urllib3/", "http/client.py", "email/"),
    ),
    ("Redis client (redis-py, hiredis)", ("redis/", "hiredis")),
    ("Celery (tracing, pool, backend, app)", ("celery/", "billiard/")),
    ("kombu (messages, broker polling, acks)", ("kombu/",)),
    ("retry controller (tenacity)", ("tenacity/",)),
    ("logging", ("logging/", "pythonjsonlogger/")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("project: apis/", ("apis/",)),
    ("project: tasks/ (incl. transform)", ("tasks/",)),
    ("project: worker/", ("worker/",)),
    ("sockets, selectors, ssl", ("socket.py", "selectors.py", "ssl.py")),
    ("threads, queues, locks", ("threading.py", "queue.py", "concurrent/")),
    ("pydantic", ("pydantic",)),
]
OTHER = "other (stdlib, interpreter)"

# Inclusive shares: samples with this function anywhere on the stack.
FUNCTIONS: list[tuple[str, str]] = [
    ("Celery task execution (trace_task), all of the below inside", "trace_task (celery/"),
    ("  fetch_pokemon task body", "fetch_pokemon (tasks/pokemon.py"),
    ("    HTTP attempt (ApiClient._send)", "_send (apis/client.py"),
    ("      body read + gunzip (ApiClient._read)", "_read (apis/client.py"),
    ("      JSON decode (ApiClient._decode)", "_decode (apis/client.py"),
    ("    retry controller built per call (build_retrying)", "build_retrying (apis/retry.py"),
    ("    transform (pokemon_summary)", "pokemon_summary (tasks/pokemon_record.py"),
    ("    freshness reads (ResultStore.read_fresh)", "read_fresh (results/store.py"),
    ("    single-flight lock (redis Lock)", "redis/lock.py"),
    ("    atomic write (ResultStore.write, Lua)", "write (results/store.py"),
    ("  result backend store (store_result)", "store_result (celery/backends"),
    (
        "  job outcome log + metrics (task_postrun handler)",
        "_job_finished (worker/observability.py",
    ),
    ("kombu message receipt / broker polling", "kombu/transport/redis.py"),
    ("task acknowledgement (ack)", "ack (kombu/message.py"),
]


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Profiler:
    """`py-spy record` attached to a worker for the duration of a `with` block."""

    def __init__(self, worker: SampledWorker, out_dir: Path, rate: int = 1000) -> None:
        self.worker = worker
        self.rate = rate
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.raw_path = out_dir / f"profile-{stamp}.txt"
        self.process: subprocess.Popen[bytes] | None = None
        self.error = ""

    def __enter__(self) -> Profiler:
        binary = find_py_spy()
        if binary is None or self.worker.process is None:
            self.error = "py-spy not installed (pip install py-spy into the venv)"
            return self
        self.raw_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            binary, "record",
            "--pid", str(self.worker.process.pid),
            "--subprocesses",
            "--rate", str(self.rate),
            "--format", "raw",
            "--full-filenames",
            "--gil",
            "--nonblocking",
            "--output", str(self.raw_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        time.sleep(1.0)  # py-spy needs a moment to attach before the scenario starts
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            _, stderr = self.process.communicate()
        if not self.raw_path.exists():
            self.error = stderr.decode(errors="replace")[-500:]

    def summary(self, cold: Mapping[str, Any]) -> dict[str, Any]:
        """Shares of samples per bucket and per key function, with ms/job estimates."""
        if self.error or not self.raw_path.exists():
            return {"error": self.error or "no profile written"}
        summary = summarize(self.raw_path.read_text(), float(cold.get("worker_cpu_ms_per_job", 0)))
        summary["raw"] = str(self.raw_path)
        return summary


def summarize(raw: str, cpu_ms_per_job: float) -> dict[str, Any]:
    """Parse py-spy's collapsed stacks (`frame;frame;... count`) into the two views."""
    buckets: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";")]
        buckets[_bucket(frames)] += count
        leaves[frames[-1]] += count
        for label, needle in FUNCTIONS:
            if any(needle in frame for frame in frames):
                functions[label] += count
    if total == 0:
        return {"error": "no samples"}

    def share(count: int) -> dict[str, float]:
        fraction = count / total
        return {
            "share": round(fraction, 4),
            "ms_per_job": round(fraction * cpu_ms_per_job, 3),
        }

    return {
        "samples": total,
        "cpu_ms_per_job": cpu_ms_per_job,
        "buckets": {name: share(count) for name, count in buckets.most_common()},
        "functions": {label: share(functions[label]) for label, _ in FUNCTIONS},
        "top_self": {frame: share(count) for frame, count in leaves.most_common(15)},
    }


def _short(frame: str) -> str:
    """`func (/…/site-packages/pkg/mod.py:12)` → `func (pkg/mod.py)`: stable across installs."""
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.removeprefix(f"{REPO_ROOT}/")
    return f"{name} ({path})" if path else name


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in PACKAGES:
            if any(needle in frame for needle in needles):
                return name
    return OTHER
