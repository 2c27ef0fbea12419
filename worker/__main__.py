"""`python -m worker [OPTIONS]`: one worker process, Celery's own `worker` command.

`celery -A worker worker` loads Celery's whole command line before it starts a worker:
every subcommand, the interactive shell's REPL (click-repl, prompt_toolkit) and, through
its plugin entry point, Flower (humanize, pytz, more of tornado and pygments). A worker
process uses none of it, and it costs about 11 MiB of resident memory per process, an
eighth of the per-process budget (docs/performance.md, "Memory per worker process").
This runs the same `worker` command, with the same options and behaviour, without the
rest. `celery -A worker worker` keeps working; `make run` and the container use this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from worker.app import app
from worker.optional_imports import absent

# Celery's command-line base colours the output of `celery inspect` and friends with
# pygments when it is installed (Flower's extra brings it): ~1.8 MiB of lexer tables a
# worker process never uses. Without it, celery's own plain-text fallback stays in place.
with absent(("pygments",)):
    from celery.bin.base import CLIContext
from celery.bin.worker import worker as worker_command


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: the command line) as `celery worker` would, then run it."""
    # NO_COLOR, as `celery` reads it (https://no-color.org: any value turns colour off).
    context = CLIContext(app=app, no_color=bool(os.environ.get("NO_COLOR")), workdir=None)
    worker_command.main(
        args=list(argv) if argv is not None else None, prog_name="python -m worker", obj=context
    )


if __name__ == "__main__":
    main()
