"""The systems a run compares: the project's worker, four baselines and, on request, more.

Beyond a default run: the project on the gevent pool, with Flower, or with every job
waited on, and two floors of its model (the asyncio probe's job on blocking threads, and
the same as a stock Celery task).

The three Celery systems register the same task names (`tasks.pokemon.fetch_pokemon`,
`tasks.pokemon.refresh_catalog`), so the driver sends the identical message to each and
only the worker on the other end changes. The Dramatiq baseline takes the same job as a
Dramatiq message, the asyncio probe as a name on a Redis list; both store the same
`pokemon:{name}` key, which is what the cold and latency scenarios watch. They run only
the scenarios their users' code can take part in: neither has a result a caller can
wait on (hot, faulty) nor a catalog task. Each is started the way its users would start
it: the project exactly as its README says (`make run`, i.e. `python -m ops.run`: one
worker process per core, settings at their defaults, the environment only telling it
where Redis and the upstream are; beat and Flower are left out of the measurement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ops.processes.ports import free_port
from settings import setting_names

FETCH_TASK = "tasks.pokemon.fetch_pokemon"
CATALOG_TASK = "tasks.pokemon.refresh_catalog"
PROJECT = "project"
# The project driven by a producer that waits on every job (the result-backend copy).
WAITED = "project-waited"
# The project with Flower attached (Flower turns the workers' task events on).
FLOWER = "project-flower"
GEVENT = "project-gevent"
TUNED = "tuned"
TUTORIAL = "tutorial"
DRAMATIQ = "dramatiq"
PROBE = "probe"
PROBE_THREADS = "probe-threads"
CELERY_FLOOR = "celery-floor"
# How the driver enqueues a job (bench.senders).
CELERY = "celery"
DRAMATIQ_PROTOCOL = "dramatiq"
LIST_PROTOCOL = "list"
# Scenario names; "small" is the cold scenario over ~4 KB bodies at 0 ms latency.
EVERY_SCENARIO = ("cold", "latency", "hot", "catalog", "faulty", "small", "refresh")
QUEUE_ONLY_SCENARIOS = ("cold", "latency", "small")


@dataclass(frozen=True)
class System:
    """One worker under test: its Celery app module, CLI arguments and queue."""

    name: str
    module: str
    queue: str
    args: tuple[str, ...] = ()
    description: str = ""
    # Whether the system records permanent failures in the `events:failures` stream.
    records_failures: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # The whole command line, when the system is not started as `celery -A MODULE worker`.
    command: tuple[str, ...] = ()
    protocol: str = CELERY
    # The Dramatiq actor name (Celery systems use FETCH_TASK).
    actor: str = ""
    scenarios: tuple[str, ...] = EVERY_SCENARIO
    # Where its code is, when not this checkout (a project system at another revision).
    cwd: str = ""
    # At most this many cold runs, whatever --repeat says (0: no limit).
    max_repeat: int = 0
    # Every job is sent asking for its result-backend copy, as a producer that waits on
    # it does (otherwise only the scenarios that read the backend ask for one).
    waits: bool = False


SYSTEMS: dict[str, System] = {
    PROJECT: System(
        name=PROJECT,
        module="worker",
        queue="pokeapi",
        description="make run: one worker process per core (threads x32 each), defaults",
        records_failures=True,
        command=("-m", "ops.run", "--no-beat", "--no-flower"),
    ),
    TUNED: System(
        name=TUNED,
        module="bench.baselines.tuned",
        queue="celery",
        description="threads x16, pooled Session, orjson, plain SET",
    ),
    TUTORIAL: System(
        name=TUTORIAL,
        module="bench.baselines.tutorial",
        queue="celery",
        # Celery's "First steps" tutorial starts its worker with --loglevel=INFO.
        args=("--loglevel=INFO",),
        description="prefork defaults, requests.get, stdlib json, plain SET",
        # Its cold runs alone take minutes; the small-body case compares the fast systems,
        # and one cold run (~50 s) is enough for a ratio this far from its target (5x).
        scenarios=("cold", "latency", "hot", "catalog", "faulty"),
        max_repeat=1,
    ),
    DRAMATIQ: System(
        name=DRAMATIQ,
        module="bench.baselines.dramatiq_redis",
        queue="default",
        # The CLI's defaults: one process per core, 8 threads each.
        command=("-m", "dramatiq", "bench.baselines.dramatiq_redis"),
        description="dramatiq CLI defaults (processes = cores, threads x8), Redis broker, "
        "pooled Session, orjson, plain SET",
        protocol=DRAMATIQ_PROTOCOL,
        actor="fetch_pokemon",
        scenarios=QUEUE_ONLY_SCENARIOS,
    ),
    PROBE: System(
        name=PROBE,
        module="bench.baselines.probe",
        queue="probe:jobs",
        command=("-m", "bench.baselines.probe"),
        description="one asyncio process: aiohttp, redis.asyncio, msgspec of five fields, "
        "a Redis list, no guarantees",
        protocol=LIST_PROTOCOL,
        scenarios=QUEUE_ONLY_SCENARIOS,
    ),
}

ALL_SYSTEMS = {
    **SYSTEMS,
    # Not in a default run: the cost of the result-backend copy, side by side.
    WAITED: replace(
        SYSTEMS[PROJECT],
        name=WAITED,
        description="make run, every job sent without ignore_result (a producer that waits)",
        waits=True,
    ),
    # Not in a default run: the same on the gevent pool (one thread, no GIL hand-offs).
    GEVENT: replace(
        SYSTEMS[PROJECT],
        name=GEVENT,
        description="make run with WORKER_POOL=gevent",
        extra_env={"WORKER_POOL": "gevent"},
    ),
    # Not in a default run: the probe's job on blocking threads, the project's model.
    PROBE_THREADS: replace(
        SYSTEMS[PROBE],
        name=PROBE_THREADS,
        module="bench.baselines.probe_threads",
        command=("-m", "bench.baselines.probe_threads"),
        description="a process per core x32 threads: urllib3, redis-py, msgspec of five "
        "fields, a Redis list, no guarantees",
    ),
    # Not in a default run: stock Celery around the threaded probe's job.
    CELERY_FLOOR: replace(
        SYSTEMS[PROBE],
        name=CELERY_FLOOR,
        module="bench.baselines.celery_floor",
        queue=SYSTEMS[PROJECT].queue,
        command=("-m", "bench.baselines.celery_floor"),
        description="stock Celery, a process per core x32 threads, late acks: the "
        "threaded probe's job as a task, no guarantees",
        protocol=CELERY,
    ),
    # Not in a default run: what task events cost with Flower watching. Flower's own CPU
    # is in the process tree, so its worker CPU per job includes Flower's.
    FLOWER: replace(
        SYSTEMS[PROJECT],
        name=FLOWER,
        description="make run with Flower (task events on), beat off",
        command=("-m", "ops.run", "--no-beat"),
        extra_env={"FLOWER_PORT": str(free_port())},
    ),
}


def project_at(revision: str, tree: str, base: str = PROJECT) -> System:
    """The project as `base` starts it (`make run`, or with Flower), from `tree`: a copy
    of `revision`'s files.

    Measures an optimisation side by side with the code before it, in one run.
    """
    system = ALL_SYSTEMS[base]
    return replace(
        system,
        name=f"{base}@{revision}",
        description=f"{system.description}, at {revision}",
        cwd=tree,
        extra_env={**system.extra_env, "FLOWER_PORT": str(free_port())}
        if base == FLOWER
        else system.extra_env,
    )


def settings_names() -> set[str]:
    """Every environment name the project reads, so a developer's shell cannot leak in."""
    return {*setting_names(), "PROMETHEUS_MULTIPROC_DIR"}
