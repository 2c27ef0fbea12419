"""The processes a benchmark run owns: a private Redis, the sandbox upstream, Celery workers.

Each runs as its own process so that its CPU is never counted as another's: the worker's
CPU is read from /proc for its process group only (a prefork pool's children included),
and the sandbox, which burns CPU building and gzipping bodies, stays outside that figure.
Every child gets its own session, so stopping one signals exactly what it forked and
nothing else on the machine. Waits are bounded by deadlines: a process that never comes
up fails the run instead of hanging it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from ops.processes.children import popen, stop_process
from ops.processes.ports import free_port
from ops.processes.redis_server import DisposableRedis
from ops.processes.waits import wait_until
from ops.processes.worker import WorkerProcess
from ops.top import summed

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _spawn(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen in a new session, tied to this process's life (ops/processes/children.py)."""
    return popen(args, **kwargs)


def _stop_group(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM the child's process group, SIGKILL it if it is still there after `grace`."""
    stop_process(process, timeout=grace)


# -- /proc readings -------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    cpu_seconds: float  # user + system of the process itself
    children_cpu_seconds: float  # of its children that exited and were reaped
    # The kernel's part of both (system calls, page faults, wake-ups).
    system_cpu_seconds: float
    rss_bytes: int


def read_stat(pid: int) -> ProcStat | None:
    """One process's CPU and RSS from /proc/PID/stat; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
        children_cpu_seconds=(int(fields[13]) + int(fields[14])) / _CLOCK_TICKS,
        system_cpu_seconds=(int(fields[12]) + int(fields[14])) / _CLOCK_TICKS,
        rss_bytes=int(fields[21]) * _PAGE_SIZE,
    )


def group_pids(root: int) -> list[int]:
    """Every live process of `root`'s process group and every descendant of `root`.

    Descendants count too: `make run` starts each worker process in a session of its own.
    """
    stats = [
        stat
        for entry in os.scandir("/proc")
        if entry.name.isdigit() and (stat := read_stat(int(entry.name))) is not None
    ]
    members = {stat.pid for stat in stats if stat.pgrp == root} | {root}
    grew = True
    while grew:
        grew = False
        for stat in stats:
            if stat.ppid in members and stat.pid not in members:
                members.add(stat.pid)
                grew = True
    return sorted(members & {stat.pid for stat in stats})


def _pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split between sharers, fair to a prefork pool."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class ProcessTree:
    """CPU and memory of a process and everything in its process group."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._pids = [root_pid]
        self._last_scan = 0.0

    def pids(self) -> list[int]:
        # A prefork pool may replace a child; rescan the group now and then, not per read.
        if time.monotonic() - self._last_scan > 1.0:
            self._pids = group_pids(self.root_pid) or [self.root_pid]
            self._last_scan = time.monotonic()
        return self._pids

    def cpu_seconds(self) -> float:
        """User + system CPU of the live group, plus what its reaped children used."""
        return self.cpu_split()[0]

    def cpu_split(self) -> tuple[float, float]:
        """(user + system, system) CPU seconds of the live group, plus what its reaped
        children used."""
        self._last_scan = 0.0
        total = system = 0.0
        for pid in self.pids():
            stat = read_stat(pid)
            if stat is not None:
                total += stat.cpu_seconds + stat.children_cpu_seconds
                system += stat.system_cpu_seconds
        return total, system

    def memory(self) -> tuple[int, int]:
        """(RSS, PSS) of the group in bytes."""
        rss, pss, _ = self.memory_detail()
        return rss, pss

    def memory_detail(self) -> tuple[int, int, int]:
        """(RSS, PSS) of the group and the RSS of its largest process, in bytes."""
        rss = pss = largest = 0
        for pid in self.pids():
            stat = read_stat(pid)
            if stat is not None:
                rss += stat.rss_bytes
                pss += _pss_bytes(pid)
                largest = max(largest, stat.rss_bytes)
        return rss, pss, largest


class MemorySampler:
    """Samples a process tree's memory a few times a second and keeps the peak.

    RSS counts pages shared by a prefork pool's children once per child; PSS splits them,
    so both are kept and the report can say which one a ratio uses.
    """

    def __init__(self, tree: ProcessTree, interval: float = 0.2) -> None:
        self.tree = tree
        self.interval = interval
        self._lock = threading.Lock()
        self._peak_rss = 0
        self._peak_pss = 0
        self._peak_largest = 0
        self._stop = threading.Event()
        # Paused while its worker sits idle, so idle workers cost the driver nothing.
        self._active = threading.Event()
        self._active.set()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._active.clear()

    def resume(self) -> None:
        self._active.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reset_peak(self) -> None:
        with self._lock:
            self._peak_rss = self._peak_pss = self._peak_largest = 0
        self.sample()

    def peak(self) -> tuple[int, int]:
        self.sample()
        with self._lock:
            return self._peak_rss, self._peak_pss

    def peak_largest(self) -> int:
        """The peak RSS of the largest single process (a per-process memory budget)."""
        self.sample()
        with self._lock:
            return self._peak_largest

    def sample(self) -> None:
        rss, pss, largest = self.tree.memory_detail()
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)
            self._peak_pss = max(self._peak_pss, pss)
            self._peak_largest = max(self._peak_largest, largest)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._active.is_set():
                self.sample()


# -- Redis ----------------------------------------------------------------------------


def notifying_redis() -> DisposableRedis:
    """The harness's disposable redis-server on loopback (never the shared one on 6379),
    with keyspace notifications for string writes on, so the driver learns the moment
    each result key is written without polling (which would cost CPU on a 2-core box and
    blur latencies by the polling interval). `cleanup()` stops it and removes its files."""
    return DisposableRedis(args=("--notify-keyspace-events", "E$"), prefix="apiworker-bench-redis-")


class KeyWatcher:
    """Records when each result key is first written, from Redis keyspace notifications.

    The time is taken on arrival in this process, on the same clock as the enqueue times,
    so enqueue→stored latencies need no clock agreement between processes.
    """

    def __init__(self, client: redis.Redis, db: int = 0, prefix: str = "pokemon:") -> None:
        self.prefix = prefix
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
        self._pubsub.subscribe(f"__keyevent@{db}__:set")
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-watcher", daemon=True)

    def start(self) -> KeyWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def seen(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.1)
            except (redis.ConnectionError, ValueError):
                return
            if message is None:
                continue
            arrived = time.time()
            key = message["data"]
            if isinstance(key, str) and key.startswith(self.prefix):
                with self._lock:
                    self._seen.setdefault(key, arrived)


# -- the sandbox upstream ---------------------------------------------------------------


def counter_total(metrics_url: str, name: str, **labels: str) -> int:
    """The sum of counter `name` over its series whose labels include `labels`, as a
    worker's `/metrics` page shows it now (read as `apiworker top` reads it)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    return int(summed(text_string_to_metric_families(text), name, "_total", **labels))


class SandboxProcess:
    """`python -m sandbox` in its own process, driven through its `/_sandbox` admin API."""

    def __init__(
        self, latency: float, *, seed: int = 7, small_bodies: bool = False, prewarm: bool = True
    ) -> None:
        self.latency = latency
        self.seed = seed
        self.small_bodies = small_bodies
        self.prewarm = prewarm
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.tree: ProcessTree | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pokeapi_url(self) -> str:
        return self.base_url + "/api/v2"

    def start(self) -> SandboxProcess:
        args = [
            sys.executable, "-m", "sandbox",
            "--port", str(self.port),
            "--latency", str(self.latency),
            "--seed", str(self.seed),
            # Every body built and gzipped before the run (~5 s; a smoke run skips it):
            # the real upstream's CPU is not on the worker's host, so its stand-in should
            # take as little as it can.
            *(["--prewarm"] if self.prewarm else []),
            *(["--small-bodies"] if self.small_bodies else []),
        ]  # fmt: skip
        self.process = _spawn(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        self.tree = ProcessTree(self.process.pid)

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("the sandbox upstream exited at start")
            try:
                self.admin("GET", "/latency")
            except OSError:
                return False
            return True

        wait_until(answers, timeout=120, what="the sandbox upstream")
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process, grace=10)
            self.process = None

    def cpu_seconds(self) -> float:
        return self.tree.cpu_seconds() if self.tree is not None else 0.0

    def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return orjson.loads(response.read())

    def get(self, path: str) -> Any:
        """A plain API read (the index), not counted against any scenario after a reset."""
        with urllib.request.urlopen(self.pokeapi_url + path, timeout=30) as response:
            return orjson.loads(response.read())

    def reset(self) -> None:
        """Clear faults and the request log."""
        self.admin("POST", "/reset")

    def inject(self, spec: Mapping[str, Any]) -> None:
        self.admin("POST", "/faults", spec)

    def calls(self) -> dict[str, int]:
        counts: dict[str, int] = self.admin("GET", "/requests")["counts"]
        return counts


# -- Celery workers ---------------------------------------------------------------------


class SampledWorker(WorkerProcess):
    """The harness's worker process (`ops.processes.worker`), with the CPU and memory of
    its process group read from /proc: `celery -A MODULE worker [args]`, or `command`,
    its environment exactly `env`, its log under `log_dir`."""

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        args: Sequence[str],
        log_dir: Path,
        *,
        label: str = "",
        command: Sequence[str] = (),
        cwd: Path = REPO_ROOT,
    ) -> None:
        super().__init__(
            env,
            command=command or ("-m", "celery", "-A", module, "worker", *args),
            log_path=log_dir / f"worker-{label or module.replace('.', '-')}.log",
            cwd=cwd,
            inherit=False,
        )
        self.name = module
        self.tree: ProcessTree | None = None
        self.sampler: MemorySampler | None = None

    def start(
        self,
        producer: Celery | None = None,
        timeout: float = 60,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> SampledWorker:
        super().start(producer, timeout, ready=ready)
        assert self.process is not None
        self.tree = ProcessTree(self.process.pid)
        self.sampler = MemorySampler(self.tree).start()
        return self

    def cpu_seconds(self) -> float:
        return self.tree.cpu_seconds() if self.tree is not None else 0.0

    def cpu_split(self) -> tuple[float, float]:
        """(all, kernel) CPU seconds of the worker's process group."""
        return self.tree.cpu_split() if self.tree is not None else (0.0, 0.0)

    def stop(self, grace: float = 20.0) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        super().stop(grace)


def clean_environment(drop: Iterable[str]) -> dict[str, str]:
    """This process's environment without the given settings, so defaults apply."""
    dropped = {name.upper() for name in drop}
    return {name: value for name, value in os.environ.items() if name.upper() not in dropped}
