"""`celery-stack-janitor`: report 002's cache manager, made safe (DESIGN "Locks and the janitor").

    celery-stack-janitor status                      Redis, queues, results, locks, scans, outbox
    celery-stack-janitor tasks [--orphaned] [--state S] [--limit N]
    celery-stack-janitor sweep [--only a,b] [--dry-run]
    celery-stack-janitor operator                    the kopf operator (Kubernetes)

`--json` prints one JSON document for machines. Exit codes: 0 ok, 1 failure, 2 bad usage.
Settings come from the environment (docs/configuration.md); locally, `make run` prints the
REDIS_URL and DATABASE_URL of its stack and writes them under .run/ (settings.py here).

`celery-stack-worker-maintenance` (worker.py) is the maintenance queue's worker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from celery_stack_core import sweeps
from celery_stack_core.config import get_settings
from celery_stack_core.localstack import use_local_stack
from celery_stack_core.sweeps import inspect as views
from celery_stack_core.sweeps import reports as policy_reports
from celery_stack_core.sweeps.base import SweepReport
from celery_stack_core.sweeps.jobs import totals
from celery_stack_janitor.context import sweep_context

T = TypeVar("T")
app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)
console = Console(stderr=False)
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except Exception as exc:  # the exit code says it failed; the message says why
        console.print(f"[red]failed:[/red] {exc!r}", highlight=False)
        raise typer.Exit(1) from exc


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def status(*, as_json: JsonOpt = False) -> None:
    """Redis memory and clients, queue depths (priority lists, unacked), result keys by state
    and TTL, orphans, locks by owner liveness, stuck scans, outbox age, in-flight batch ages."""

    async def go() -> dict[str, Any]:
        async with sweep_context(get_settings()) as ctx:
            return await views.status(ctx)

    data = _run(go())
    if as_json:
        _emit(data)
        return
    table = Table(title="celery-stack janitor status", show_header=False)
    for section, values in data.items():
        table.add_section()
        for key, value in values.items():
            table.add_row(section, key, json.dumps(value, default=str))
    console.print(table)


@app.command()
def tasks(
    *,
    orphaned: Annotated[
        bool | None, typer.Option("--orphaned/--not-orphaned", help="Only orphans / non-orphans.")
    ] = None,
    state: Annotated[str | None, typer.Option(help="Only this state, e.g. SUCCESS.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Celery result keys with their state, TTL, the row they belong to, and whether orphaned."""
    if state is not None and state not in views.TASK_STATES:
        raise typer.BadParameter(f"one of {', '.join(views.TASK_STATES)}", param_hint="--state")

    async def go() -> tuple[list[dict[str, Any]], int]:
        async with sweep_context(get_settings()) as ctx:
            return await views.list_tasks(
                ctx, orphaned=orphaned, state=state, cursor=0, limit=limit
            )

    items, cursor = _run(go())
    if as_json:
        _emit({"items": items, "next_cursor": cursor or None})
        return
    table = Table("task id", "state", "ttl", "row", "orphaned")
    for it in items:
        table.add_row(it["task_id"], it["state"], str(it["ttl"]), it["row"], str(it["orphaned"]))
    console.print(table)


def _print_reports(reports: list[SweepReport]) -> None:
    table = Table("sweep", "examined", "found", "done", "by action", "skipped", "complete")
    for r in reports:
        table.add_row(
            r.sweep,
            str(r.examined),
            str(r.found),
            str(r.done),
            json.dumps(dict(r.by_action)),
            json.dumps(dict(r.skipped)),
            str(r.complete),
        )
    console.print(table)


@app.command()
def sweep(
    *,
    only: Annotated[
        str | None, typer.Option(help=f"Comma-separated subset of: {', '.join(sweeps.SWEEPS)}.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the sweeps (all, or --only some). A dry run reports exactly what a real run does."""
    try:
        names = sweeps.select_sweeps(only.split(",") if only else None)
    except sweeps.UnknownSweep as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from exc

    async def go() -> list[SweepReport]:
        async with sweep_context(get_settings()) as ctx:
            if as_json or not console.is_terminal:
                reports = await sweeps.run(ctx, names, dry_run=dry_run)
                if ctx.settings.janitor.policy:  # a JanitorPolicy's CronJob: for its status
                    summary = {"dry_run": dry_run, "finished_at": time.time(), **totals(reports)}
                    await policy_reports.save(ctx.redis, ctx.settings.janitor.policy, summary)
                return reports
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("sweeping", total=len(names))

                async def step(report: SweepReport) -> None:
                    bar.update(task, advance=1, description=report.sweep)

                return await sweeps.run(ctx, names, dry_run=dry_run, progress=step)

    reports = _run(go())
    if as_json:
        _emit({"dry_run": dry_run, "sweeps": [r.as_dict() for r in reports]})
    else:
        _print_reports(reports)


@app.command()
def operator() -> None:
    """Run the kopf operator: JanitorPolicy -> CronJob, worker pod deleted -> release its locks."""
    from celery_stack_janitor.operator import run_operator

    run_operator()


def main() -> None:
    use_local_stack()  # next to `make run`: its running stack, unless the env names one
    app()
