"""`celery-stack-beat run`."""

from __future__ import annotations

import signal
import threading

import typer

from celery_stack_beat import runner
from celery_stack_beat.schedule import schedule
from celery_stack_core import metrics
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings
from celery_stack_core.logs import configure_logging

app = typer.Typer(no_args_is_help=True, help="celery-stack beat")


@app.command()
def run() -> None:
    """Send the periodic tasks until SIGTERM/SIGINT."""
    settings = get_settings()
    configure_logging("beat", settings.LOG_LEVEL)
    metrics.serve(settings.METRICS_PORT)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner.run(
        make_celery(settings, "celery_stack_beat"),
        schedule(settings),
        tick=settings.BEAT_TICK,
        stop=stop,
    )


@app.command()
def show() -> None:
    """Print the schedule."""
    for e in schedule(get_settings()):
        typer.echo(f"{e.name:24} {e.task:24} every {e.every:g}s catch-up={e.catch_up}")
