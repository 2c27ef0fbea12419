"""`apiworker`: the operator's view of the worker from a shell.

It sends jobs by their public names, reads the results contract and the failure stream,
and checks what the worker depends on. Settings come from the worker's own environment
variables, read afresh on every invocation rather than from the process-wide caches,
so a command always talks to the Redis it was pointed at.
"""

from __future__ import annotations

import difflib
import json
import logging
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, cast

import click
import redis
from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisconn
from apis import ApiClient, ApiSettings, client_classes
from apis.config import RetryPolicy
from brokers import (
    ALL_QUEUES,
    Broker,
    BrokerError,
    NotSupported,
    ParkedMessage,
    broker_module,
    open_broker,
)
from ops.processes import redacted
from redisconn import RedisTarget
from settings import WorkerSettings
from tasks.keys import Keys
from telemetry import trace_context
from telemetry.redact import redact
from worker.app import app as project_app

# The public contract: task name -> its parameters. Checked before sending, because a
# job under a wrong name or with the wrong arguments would only fail on the worker.
PUBLIC_TASKS: Mapping[str, tuple[str, ...]] = {
    "tasks.pokemon.fetch_pokemon": ("name_or_id",),
    "tasks.pokemon.refresh_catalog": (),
    "tasks.cms.sync_article": ("slug",),
    "tasks.cms.sync_articles": (),
    "tasks.semaphore.sync_pipelines": ("project_id",),
    "tasks.semaphore.sync_all_projects": (),
}

# What a sender must share with the worker for a job to be routed and decoded as the
# worker expects; the connection URLs are deliberately not among them.
_SENDER_CONF = (
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_accept_content",
    "task_default_queue",
    "task_routes",
    "result_extended",
)

Record = dict[str, str]
Entry = tuple[str, Record]


class ConfigError(click.ClickException):
    """The environment or an option names an invalid setting: a usage error."""

    exit_code = 2


def fail(message: str) -> NoReturn:
    """Stop with exit code 1: what was asked about failed or does not exist."""
    raise click.ClickException(message)


def json_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: The URL with any password masked, so output can be pasted into a ticket.
safe_url = redacted


def sender_app(settings: WorkerSettings) -> Celery:
    """A sender with the project app's routing and serialisation and these settings' URLs.

    `worker.app` fixes its broker when it is first imported; copying its routing instead
    keeps jobs routed exactly as the worker expects while honouring this invocation's URLs.
    """
    app = Celery("apiworker", set_as_current=False)
    app.conf.update(
        {name: project_app.conf[name] for name in _SENDER_CONF},
        # The queues and transport options of this invocation's broker, which need not be
        # the one `worker.app` was configured for when it was imported.
        **broker_module(settings.broker_url).celery_conf(settings),
        **settings.celery_connection.settings,
    )
    # Sentinel's master name and the sentinels' credentials (redisconn.celery_config).
    connection = settings.celery_connection
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        **connection.broker_transport_options,
    }
    app.conf.result_backend_transport_options = {
        **app.conf.result_backend_transport_options,
        **connection.backend_transport_options,
    }
    return app


@dataclass
class Services:
    """The connections one invocation needs, opened on first use and closed at exit."""

    settings: WorkerSettings
    _clients: list[redis.Redis] = field(default_factory=list)
    _celery: Celery | None = None
    _broker: Broker | None = None

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.result_key_prefix)

    def results(self) -> redis.Redis:
        """The results Redis: REDIS_URL, or the master the sentinels name."""
        return self.redis(self.settings.redis)

    def broker(self) -> Broker:
        """The broker behind CELERY_BROKER_URL, over its own protocol."""
        if self._broker is None:
            prefix = project_app.conf.broker_transport_options.get("global_keyprefix", "")
            try:
                self._broker = open_broker(
                    self.settings.broker_url,
                    redis_key_prefix=prefix,
                    redis_target=self.settings.broker_redis,
                )
            except BrokerError as exc:
                raise ConfigError(str(exc)) from exc
        return self._broker

    def redis(self, target: RedisTarget | str, **options: Any) -> redis.Redis:
        """A client of `target` (a URL for a Redis given on its own, as `queues` does)."""
        if isinstance(target, str):
            target = RedisTarget.from_url(target)
        try:
            client = redisconn.client(
                target, **{"decode_responses": True, "socket_connect_timeout": 5, **options}
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {target.describe()}: {exc}") from exc
        self._clients.append(client)
        return client

    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = sender_app(self.settings)
        return self._celery

    def close(self) -> None:
        for client in self._clients:
            client.close()
        if self._celery is not None:
            self._celery.close()
        if self._broker is not None:
            self._broker.close()


class OperatorGroup(click.Group):
    """Turns an unreachable Redis or broker into a one-line error and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis error: {exc}") from exc
        except (OperationalError, BrokerError) as exc:
            raise click.ClickException(f"broker error: {exc}") from exc


@click.group(cls=OperatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", metavar="URL", help="Results Redis; overrides REDIS_URL.")
@click.option("-v", "--verbose", is_flag=True, help="Also show the libraries' log messages.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, verbose: bool) -> None:
    """Operate the api-layer-worker: send jobs, read results, replay failures, check health.

    Reads the worker's environment variables (REDIS_URL, CELERY_BROKER_URL,
    CELERY_RESULT_BACKEND, RESULT_KEY_PREFIX, POKEAPI_BASE_URL, ...).
    """
    # There is no --broker-url: Celery itself prefers CELERY_BROKER_URL to its config,
    # so such an option could not be honoured for sending.
    overrides: dict[str, Any] = {} if redis_url is None else {"redis_url": redis_url}
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid worker settings:\n{exc}") from exc
    services = Services(settings)
    ctx.call_on_close(services.close)
    ctx.obj = services


# -- enqueue --------------------------------------------------------------------------


def parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--kwargs") from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    return value


def check_call(task: str, args: Sequence[object], kwargs: Mapping[str, object]) -> None:
    """Refuse a job the worker could never run, before it reaches a queue."""
    params = PUBLIC_TASKS.get(task)
    if params is None:
        close = difflib.get_close_matches(task, PUBLIC_TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        valid = "\n  ".join(PUBLIC_TASKS)
        raise click.UsageError(f"unknown task {task!r}{hint}; valid tasks:\n  {valid}")
    given = [*params[: len(args)], *kwargs]
    problems = []
    if len(args) > len(params):
        problems.append(f"takes {len(params)} positional argument(s), got {len(args)}")
    if unknown := sorted(set(kwargs) - set(params)):
        problems.append(f"unknown keyword argument(s): {', '.join(unknown)}")
    if twice := sorted(name for name in set(given) if given.count(name) > 1):
        problems.append(f"argument(s) given twice: {', '.join(twice)}")
    if missing := [name for name in params if name not in given]:
        problems.append(f"missing argument(s): {', '.join(missing)}")
    if problems:
        signature = f"{task}({', '.join(params)})"
        raise click.UsageError(f"{signature}: {'; '.join(problems)}")


def print_outcome(job: Any, timeout: float) -> None:
    """Print a finished job's result, or stop with 1 on failure or timeout."""
    try:
        value = job.get(timeout=timeout, propagate=False)
    except ResultTimeout:
        fail(f"timed out after {timeout:g}s waiting for job {job.id} (state {job.state})")
    if job.state != "SUCCESS":
        error = job.result
        fail(f"job {job.id} {job.state}: {type(error).__name__}: {redact(str(error))}")
    click.echo(json_line(value))


@cli.command()
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as an object.")
@click.option(
    "--queue", type=click.Choice(ALL_QUEUES), help="Send to this queue instead of the routed one."
)
@click.option("--wait", is_flag=True, help="Wait for the job and print its result as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@click.option(
    "--traceparent",
    envvar="TRACEPARENT",
    callback=trace_context.traceparent,
    help="W3C traceparent: the job's spans join this trace.",
)
@click.option(
    "--tracestate", envvar="TRACESTATE", callback=trace_context.tracestate, help="W3C tracestate."
)
@click.pass_obj
def enqueue(
    services: Services,
    task: str,
    args: tuple[str, ...],
    kwargs_json: str | None,
    queue: str | None,
    wait: bool,
    timeout: float,
    traceparent: str | None,
    tracestate: str | None,
) -> None:
    """Send TASK by its public name with ARGs (as strings) and print the job id.

    With --wait, also print the result; exit 1 if the job fails or is not done in time.
    With --traceparent (or TRACEPARENT), the job is part of that trace.
    """
    kwargs = parse_kwargs(kwargs_json)
    check_call(task, args, kwargs)
    # The routing key too: the task's route would otherwise still name its usual queue.
    options: dict[str, Any] = {"queue": queue, "routing_key": queue} if queue else {}
    if traceparent:
        options["headers"] = trace_context.headers(traceparent, tracestate)
    job = services.celery().send_task(task, args=list(args), kwargs=kwargs, **options)
    click.echo(job.id)
    if wait:
        print_outcome(job, timeout)


# -- result ---------------------------------------------------------------------------


@cli.command()
@click.argument("kind")
@click.argument("ident")
@click.option("--meta", is_flag=True, help="Also print the metadata hash as a JSON line.")
@click.pass_obj
def result(services: Services, kind: str, ident: str, meta: bool) -> None:
    """Print the stored JSON of the result KIND:IDENT.

    For example `apiworker result pokemon charizard`. Exit 1 when nothing is stored.
    """
    client = services.results()
    key = services.keys.result(kind, ident)
    value = client.get(key)
    if value is None:
        fail(f"no result at {key}")
    click.echo(value)
    if meta:
        click.echo(json_line(client.hgetall(services.keys.meta(kind, ident))))


# -- follow ---------------------------------------------------------------------------


def entries_of(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 or RESP3 shape)."""
    if not reply:
        return []
    batches = reply.values() if isinstance(reply, dict) else [batch[1] for batch in reply]
    return [(entry_id, fields or {}) for batch in batches for entry_id, fields in batch]


def newest_id(client: redis.Redis, stream: str) -> str:
    """The id to read after for "new events only"; unlike `$` it survives between reads."""
    top = cast(list[Entry], client.xrevrange(stream, count=1))
    return top[0][0] if top else "0-0"


def read_stream(client: redis.Redis, stream: str, after: str, block: int) -> Iterator[Entry]:
    while True:
        for entry in entries_of(client.xread({stream: after}, count=100, block=block)):
            after = entry[0]
            yield entry


def read_group(
    client: redis.Redis, stream: str, group: str, consumer: str, *, from_start: bool, block: int
) -> Iterator[Entry]:
    """This consumer's unacknowledged entries first (a crash left them), then new ones."""
    try:
        client.xgroup_create(stream, group, id="0" if from_start else "$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    pending = "0"
    while batch := entries_of(client.xreadgroup(group, consumer, {stream: pending}, count=100)):
        yield from batch
        pending = batch[-1][0]
    while True:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=100, block=block)
        yield from entries_of(reply)


@cli.command()
@click.option(
    "--from-start",
    is_flag=True,
    help="Begin at the oldest event, not new ones (with --group: when creating it).",
)
@click.option(
    "--count", type=click.IntRange(min=1), help="Stop after N events (default: until Ctrl-C)."
)
@click.option("--group", help="Read as consumer group G (created if missing); ack each event.")
@click.option("--consumer", help="Consumer name in --group.  [default: this host's name]")
@click.option(
    "--block",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    metavar="MS",
    help="How long one read waits for new events.",
)
@click.pass_obj
def follow(
    services: Services,
    from_start: bool,
    count: int | None,
    group: str | None,
    consumer: str | None,
    block: int,
) -> None:
    """Print events of the results stream as JSON lines, as results are written.

    Each line is the event's fields plus `entry_id`. With --group, events are shared
    between the consumers of the group and acknowledged once printed.
    """
    if consumer and not group:
        raise click.UsageError("--consumer needs --group")
    client = services.results()
    stream = services.keys.events
    if group:
        name = consumer or socket.gethostname()
        entries = read_group(client, stream, group, name, from_start=from_start, block=block)
    else:
        after = "0-0" if from_start else newest_id(client, stream)
        entries = read_stream(client, stream, after, block)
    printed = 0
    try:
        for entry_id, fields in entries:
            if fields:  # a group's pending entry that was since deleted has none
                click.echo(json_line({"entry_id": entry_id, **fields}))
                printed += 1
            if group:
                client.xack(stream, group, entry_id)
            if count is not None and printed >= count:
                return
    except KeyboardInterrupt:
        return


# -- failures -------------------------------------------------------------------------


@cli.group()
def failures() -> None:
    """Inspect and replay jobs that failed permanently (the failure stream)."""


def failure_line(entry_id: str, record: Record) -> str:
    kwargs = record.get("kwargs", "{}")
    call = record.get("args", "[]") + ("" if kwargs == "{}" else f" {kwargs}")
    return "  ".join(
        (
            entry_id,
            record.get("failed_at", "?"),
            record.get("task", "?"),
            call,
            f"{record.get('error', '?')}: {record.get('message', '')}",
            f"attempts={record.get('attempts', '?')}",
        )
    )


@failures.command("list")
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def list_failures(services: Services, count: int, as_json: bool) -> None:
    """Show recorded failures, newest first: id, time, task, arguments, error, attempts."""
    entries = cast(list[Entry], services.results().xrevrange(services.keys.failures, count=count))
    if not entries and not as_json:
        click.echo("no failures recorded", err=True)
    for entry_id, record in entries:
        if as_json:
            click.echo(json_line({"entry_id": entry_id, **record}))
        else:
            click.echo(failure_line(entry_id, record))


@dataclass(frozen=True)
class Replay:
    entry_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]


def replay_of(entry_id: str, record: Record) -> Replay:
    """The job a failure record describes, or exit 1 if it cannot be sent again."""
    task = record.get("task", "")
    try:
        args = json.loads(record.get("args", "[]"))
        kwargs = json.loads(record.get("kwargs", "{}"))
    except json.JSONDecodeError as exc:
        fail(f"failure {entry_id}: unreadable arguments: {exc}")
    if task not in PUBLIC_TASKS or not isinstance(args, list) or not isinstance(kwargs, dict):
        fail(f"failure {entry_id}: cannot replay task {task!r} with {args!r} {kwargs!r}")
    return Replay(entry_id, task, args, kwargs)


def find_failures(client: redis.Redis, stream: str, entry_ids: Sequence[str]) -> list[Entry]:
    """The named entries, or exit 1 naming every id that is not in the stream."""
    found: list[Entry] = []
    unknown: list[str] = []
    for entry_id in dict.fromkeys(entry_ids):
        try:
            entries = cast(list[Entry], client.xrange(stream, entry_id, entry_id))
        except redis.ResponseError:  # not a stream id at all
            entries = []
        if entries:
            found.extend(entries)
        else:
            unknown.append(entry_id)
    if unknown:
        fail(f"no such failure entry: {', '.join(unknown)}")
    return found


@failures.command("replay")
@click.argument("entry_ids", nargs=-1, metavar="[ENTRY_ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every recorded failure.")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; change nothing.")
@click.pass_obj
def replay(services: Services, entry_ids: tuple[str, ...], replay_all: bool, dry_run: bool) -> None:
    """Send failed jobs again under their task names and arguments; print the new job ids.

    A replayed entry is removed from the failure stream so that it is not replayed
    twice; if the job fails again it records a new failure. Exit 1 on an unknown id,
    before anything is sent.
    """
    if bool(entry_ids) == replay_all:
        raise click.UsageError("give ENTRY_IDs or --all (not both)")
    client = services.results()
    stream = services.keys.failures
    if replay_all:
        entries = cast(list[Entry], client.xrange(stream))
    else:
        entries = find_failures(client, stream, entry_ids)
    jobs = [replay_of(entry_id, record) for entry_id, record in entries]
    if not jobs:
        click.echo("no failures to replay", err=True)
    for job in jobs:
        call = f"{job.task} {json_line(job.args)} {json_line(job.kwargs)}"
        if dry_run:
            click.echo(f"{job.entry_id} would send {call}")
            continue
        sent = services.celery().send_task(job.task, args=job.args, kwargs=job.kwargs)
        client.xdel(stream, job.entry_id)
        click.echo(f"{job.entry_id} -> {sent.id} {call}")


# -- queues ---------------------------------------------------------------------------


def count_cell(value: int | None) -> str:
    return "-" if value is None else str(value)


@cli.command()
@click.pass_obj
def queues(services: Services) -> None:
    """Show each queue's jobs: waiting (ready), taken by a worker but not yet
    acknowledged (in hand), and parked (dead).

    A "-" is what the broker cannot tell: RabbitMQ reports unacknowledged counts only
    through its management API (RABBITMQ_MANAGEMENT_URL).
    """
    depths = services.broker().depths(ALL_QUEUES)
    click.echo(f"{'queue':<10} {'ready':>7} {'unacked':>8} {'dead':>6}")
    for depth in depths:
        click.echo(
            f"{depth.name:<10} {depth.ready:>7} {count_cell(depth.unacked):>8} "
            f"{count_cell(depth.dead):>6}"
        )


# -- dead letters ---------------------------------------------------------------------


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect and replay jobs parked in a queue's `.dead` queue (a list, on Redis).

    A job is parked when BROKER_DELIVERY_LIMIT of its deliveries ended without an
    acknowledgement because its worker died (it keeps killing its workers), or, on
    RabbitMQ, when no task could run it (on Redis that one is in `apiworker failures`).
    """


queue_choice = click.option(
    "--queue",
    "queue_names",
    type=click.Choice(ALL_QUEUES),
    multiple=True,
    help="Only this queue (repeatable).  [default: every queue]",
)


def parked_line(message: ParkedMessage) -> str:
    call = json_line(message.args) + ("" if not message.kwargs else f" {json_line(message.kwargs)}")
    return "  ".join(
        (
            message.queue,
            message.task_id or "?",
            message.task,
            call,
            f"reason={message.reason}",
            f"deliveries={message.deliveries}",
        )
    )


def parked_json(message: ParkedMessage) -> str:
    return json_line(
        {
            "queue": message.queue,
            "task": message.task,
            "task_id": message.task_id,
            "args": message.args,
            "kwargs": message.kwargs,
            "reason": message.reason,
            "deliveries": message.deliveries,
        }
    )


def parked_or_exit(action: Callable[[], list[ParkedMessage]]) -> list[ParkedMessage]:
    try:
        return action()
    except NotSupported as exc:
        fail(str(exc))


@dead_letters.command("list")
@queue_choice
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def list_dead_letters(
    services: Services, queue_names: tuple[str, ...], count: int, as_json: bool
) -> None:
    """Show parked jobs, oldest first: queue, job id, task, arguments, why, deliveries.

    Nothing is removed.
    """
    broker = services.broker()
    found = parked_or_exit(lambda: broker.parked(queue_names or ALL_QUEUES, count))
    if not found and not as_json:
        click.echo("no dead-lettered jobs", err=True)
    for message in found:
        click.echo(parked_json(message) if as_json else parked_line(message))


@dead_letters.command("replay")
@queue_choice
@click.option("--count", type=click.IntRange(min=1), help="Replay at most N jobs.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every parked job.")
@click.pass_obj
def replay_dead_letters(
    services: Services, queue_names: tuple[str, ...], count: int | None, replay_all: bool
) -> None:
    """Send parked jobs back to the queue they came from, with a fresh delivery count.

    Each job is published (and confirmed by RabbitMQ; on Redis, moved in one step) before
    it leaves the dead-letter queue, so a replay interrupted halfway loses nothing.
    """
    if (count is None) == (not replay_all):
        raise click.UsageError("give --count N or --all (not both)")
    broker = services.broker()
    replayed = parked_or_exit(lambda: broker.replay_parked(queue_names or ALL_QUEUES, count))
    if not replayed:
        click.echo("no dead-lettered jobs to replay", err=True)
    for message in replayed:
        click.echo(f"replayed {parked_line(message)}")


# -- health ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not configured, so not checked
    detail: str

    def line(self) -> str:
        status = {True: "ok", False: "FAIL", None: "skip"}[self.ok]
        return f"{status:<5} {self.name:<10} {self.detail}"


def ping_redis(services: Services, name: str, target: RedisTarget, timeout: float) -> Check:
    # No retries: a health check reports the state now, within its timeout.
    client = services.redis(
        target, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return Check(name, False, redact(f"{target.describe()}: {exc}"))
    return Check(name, True, target.describe())


def sentinel_check(target: RedisTarget) -> Check:
    """Where the sentinels say the master is, which replicas follow it, who answers."""
    try:
        found = redisconn.topology(target)
    except (redis.RedisError, OSError) as exc:
        return Check("sentinel", False, redact(f"{target.describe()}: {exc}"))
    replicas = ", ".join(f"{host}:{port}" for host, port in found.replicas) or "none"
    host, port = found.master
    detail = (
        f"master {target.master} at {host}:{port}; replicas: {replicas}; "
        f"sentinels answering: {found.sentinels_answering}/{len(target.sentinels)}"
    )
    return Check("sentinel", True, detail)


def ping_broker(services: Services, timeout: float) -> Check:
    """The broker checked over its own protocol (Redis PING, an AMQP connection)."""
    try:
        broker = services.broker()
        return Check("broker", True, broker.ping(timeout))
    except (BrokerError, ConfigError) as exc:
        return Check("broker", False, str(exc))


def ping_workers(services: Services, timeout: float) -> Check:
    replies = services.celery().control.ping(timeout=timeout)
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check("workers", False, f"no worker answered within {timeout:g}s")
    return Check("workers", True, f"{len(names)} answered: {', '.join(names)}")


# One cheap GET per upstream, through the API layer so auth and errors are the worker's.
# Each client names its own (`ApiClient.probe`); the upstreams are the registry's.
PROBES: Mapping[type[ApiClient], Callable[[Any], object]] = {
    cls: cls.probe for cls in client_classes()
}


def probe_upstream(
    cls: type[ApiClient], probe: Callable[[Any], object], api: ApiSettings, timeout: float
) -> Check:
    config = cls.configure(api)
    if config.base_url is None:
        return Check(cls.service, None, f"not configured (set {config.base_url_setting})")
    if cls.requires_token and config.token is None:
        return Check(cls.service, None, f"not configured (set {config.token_setting})")
    quick = replace(
        config,
        connect_timeout=timeout,
        read_timeout=timeout,
        retry=RetryPolicy(attempts=1, max_seconds=timeout),
    )
    client = cls(quick)
    try:
        probe(client)
    except Exception as exc:  # a health check reports every failure; it must not crash
        return Check(cls.service, False, redact(f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()
    return Check(cls.service, True, safe_url(config.base_url))


def upstream_checks(timeout: float) -> list[Check]:
    try:
        api = ApiSettings()
    except ValidationError as exc:
        return [Check("upstreams", False, f"invalid settings: {exc.errors()[0]['msg']}")]
    return [probe_upstream(cls, probe, api, timeout) for cls, probe in PROBES.items()]


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds each check may take.",
)
@click.pass_context
def health(ctx: click.Context, timeout: float) -> None:
    """Check the broker, the results Redis, the workers and each configured upstream.

    Prints one line per check. Exit 0 when every check passes (an upstream that is not
    configured is skipped), 1 otherwise.
    """
    services: Services = ctx.obj
    settings = services.settings
    broker = ping_broker(services, timeout)
    checks = [broker, ping_redis(services, "results", settings.redis, timeout)]
    if settings.redis.uses_sentinel:
        checks.append(sentinel_check(settings.redis))
    if broker.ok:
        checks.append(ping_workers(services, timeout))
    else:
        checks.append(Check("workers", False, "not checked: the broker is unreachable"))
    checks += upstream_checks(timeout)
    for check in checks:
        click.echo(check.line())
    if any(check.ok is False for check in checks):
        ctx.exit(1)


def main() -> None:
    # Each command reports its failures itself; the libraries' logs would repeat them
    # unless asked for with --verbose.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    cli(prog_name="apiworker")


if __name__ == "__main__":
    main()
