"""`celery-stack-beat run | status | alive | show`."""

from __future__ import annotations

import asyncio
import faulthandler
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import typer

from celery_stack_beat.schedule import Entry
from celery_stack_core.config import Settings, get_settings
from celery_stack_core.logs import configure_logging

app = typer.Typer(no_args_is_help=True, help="celery-stack beat")

DEFAULT_SCHEDULE = "celery_stack_beat.schedule:schedule"
SCHEDULE_OPT = typer.Option(DEFAULT_SCHEDULE, "--schedule", help="module:function -> entries")


def load_schedule(ref: str) -> Callable[[Settings], list[Entry]]:
    module, _, attr = ref.partition(":")
    fn: Callable[[Settings], list[Entry]] = getattr(importlib.import_module(module), attr)
    return fn


@app.command()
def run(
    *,
    schedule: str = SCHEDULE_OPT,
    restart_on_loss: bool = typer.Option(
        False, help="re-exec this process after losing leadership instead of exiting (make run)"
    ),
) -> None:
    """Campaign for leadership and send the schedule while leading; SIGTERM releases."""
    settings = get_settings()
    configure_logging("beat", settings.deploy.log_level)
    # `kill -USR1` dumps every thread's stack to stderr: for a replica that will not stop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from celery_stack_beat import service

    entries = load_schedule(schedule)(settings)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await service.serve(settings, entries, stop)

    code = asyncio.run(main())
    if code == service.EXIT_LOST and restart_on_loss:
        # A new process image: fresh identity, nothing remembered, back to standby.
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606
    raise typer.Exit(code)


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@app.command()
def status(
    *,
    schedule: str = SCHEDULE_OPT,
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Who leads, the current epoch, and the next due slot of every entry (from Redis)."""
    from celery_stack_beat.status import read_status
    from celery_stack_core.localstack import use_local_stack
    from celery_stack_core.redis_client import make_async_redis

    use_local_stack()  # `make run`'s stack, not a default URL that may be another Redis
    settings = get_settings()
    entries = load_schedule(schedule)(settings)

    async def read() -> dict[str, object]:
        redis = make_async_redis(settings)
        try:
            return await read_status(redis, entries)
        finally:
            await redis.aclose()

    data = asyncio.run(read())
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    leader = data["leader"]
    if isinstance(leader, dict):
        typer.echo(
            f"leader: {leader.get('holder')} (epoch {leader.get('epoch')}, "
            f"{leader.get('election')})"
        )
    else:
        typer.echo("leader: none")
    typer.echo(f"epoch:  {data['epoch']}")
    typer.echo(f"{'entry':24} {'schedule':16} {'catch-up':8} {'last slot':23} {'next due':23}")
    for row in data["entries"]:  # type: ignore[attr-defined]
        typer.echo(
            f"{row['entry']:24} {row['schedule']:16} {row['catch_up']:8} "
            f"{_fmt_ms(row['last_ms']):23} {_fmt_ms(row['next_due_ms']):23}"
        )


@app.command()
def alive() -> None:
    """Liveness probe: exit 0 if this replica made progress within BEAT_ALIVE_MAX_AGE."""
    from celery_stack_core.liveness import heartbeat_age

    settings = get_settings()
    age = heartbeat_age(settings.beat.heartbeat_file)
    if age > settings.beat.alive_max_age:
        typer.echo(f"not alive: last progress {age:.1f}s ago", err=True)
        raise typer.Exit(1)
    typer.echo(f"alive: last progress {age:.1f}s ago")


@app.command()
def show(schedule: str = SCHEDULE_OPT) -> None:
    """Print the schedule."""
    for e in load_schedule(schedule)(get_settings()):
        when = e.cron or f"every {e.every:g}s"
        typer.echo(f"{e.name:24} {e.task:28} {e.queue:12} {when:16} catch-up={e.catch_up}")
