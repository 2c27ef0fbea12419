"""`python -m worker [OPTIONS]`: one worker process, Celery's own `worker` command.

`celery -A worker worker` loads Celery's whole command line before it starts a worker:
every subcommand, the interactive shell's REPL (click-repl, prompt_toolkit) and, through
its plugin entry point, Flower (humanize, pytz, more of tornado and pygments). A worker
process uses none of it, and it costs about 11 MiB of resident memory per process, an
eighth of the per-process budget (docs/performance.md, "Memory per worker process").
This runs the same `worker` command, with the same options and behaviour, without the
rest. `celery -A worker worker` keeps working; `make run` and the container use this.

The green pools need their monkey patching before anything else is imported, as
`celery`'s own entry point does for `-P gevent`: without it the gevent and eventlet pools
run every job's blocking I/O one at a time. Here the pool is also taken from
`WORKER_POOL`, which Celery's entry point does not read: a pool chosen by its setting is
patched too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

#: The green pools, which monkey-patch the standard library before it is used.
GREEN_POOLS = ("gevent", "eventlet")
#: The setting that chooses the pool (settings/worker.py, `worker_pool`), read here
#: before the settings can be: it is validated with the rest once the app loads.
POOL_VARIABLE = "WORKER_POOL"


def chosen_pool(argv: Sequence[str]) -> str | None:
    """The pool `argv` names (`-P X`, `-PX`, `--pool X`, `--pool=X`), else the setting's."""
    for index, arg in enumerate(argv):
        if arg in ("-P", "--pool") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return os.environ.get(POOL_VARIABLE)


def patch_green_pool(argv: Sequence[str]) -> None:
    """Monkey-patch for a green pool, through Celery's own patcher, before any import
    that opens sockets or starts threads."""
    pool = chosen_pool(argv)
    if pool in GREEN_POOLS:
        from celery import maybe_patch_concurrency

        maybe_patch_concurrency(["worker", "-P", pool])


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: the command line) as `celery worker` would, then run it."""
    import sys

    arguments = list(argv) if argv is not None else sys.argv[1:]
    patch_green_pool(arguments)
    # Then redis-py, kombu and tenacity without their unused extras (worker/optional_imports.py),
    # before Celery's command line imports kombu.
    from worker.optional_imports import absent

    # Celery's command-line base colours the output of `celery inspect` and friends with
    # pygments when it is installed (Flower's extra brings it): ~1.8 MiB of lexer tables a
    # worker process never uses. Without it, celery's plain-text fallback stays in place.
    with absent(("pygments",)):
        from celery.bin.base import CLIContext
    from celery.bin.worker import worker as worker_command

    from worker.app import app

    # NO_COLOR, as `celery` reads it (https://no-color.org: any value turns colour off).
    context = CLIContext(app=app, no_color=bool(os.environ.get("NO_COLOR")), workdir=None)
    worker_command.main(args=arguments, prog_name="python -m worker", obj=context)


if __name__ == "__main__":
    main()
