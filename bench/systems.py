"""The systems a run compares: the project's worker and two baselines.

All three register the same task names (`tasks.pokemon.fetch_pokemon`,
`tasks.pokemon.refresh_catalog`), so the driver sends the identical message to each and
only the worker on the other end changes. Each is started the way its users would start
it: the project exactly as its README says (`make run`, i.e. `python -m ops.run`: one
worker process per core, settings at their defaults, the environment only telling it
where Redis and the upstream are; beat and Flower are left out of the measurement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.settings import setting_names

FETCH_TASK = "tasks.pokemon.fetch_pokemon"
CATALOG_TASK = "tasks.pokemon.refresh_catalog"
PROJECT = "project"
TUNED = "tuned"
TUTORIAL = "tutorial"


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


SYSTEMS: dict[str, System] = {
    PROJECT: System(
        name=PROJECT,
        module="worker",
        queue="pokeapi",
        description="make run: one worker process per core (threads x16 each), defaults",
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
    ),
}

ALL_SYSTEMS = SYSTEMS


def settings_names() -> set[str]:
    """Every environment name the project reads, so a developer's shell cannot leak in."""
    return {*setting_names(), "PROMETHEUS_MULTIPROC_DIR"}
