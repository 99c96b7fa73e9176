"""`celery-stack-dev run`: the local stack (what `make run` calls)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="celery-stack local development")


@app.command()
def run(  # noqa: PLR0913 - one parameter per CLI option (typer), keyword-only
    *,
    run_dir: Path = typer.Option(Path(".run"), help="Where local servers keep their data."),
    api_port: int = typer.Option(8000, help="API port."),
    demo_port: int = typer.Option(8081, help="Port of the demo site the scanner may scan."),
    metrics_port_base: int = typer.Option(
        9808, help="Metrics ports of workers and beat: this one and the next four."
    ),
    move_ports: bool = typer.Option(
        False,
        "--move-ports",
        help="Use free ports (and say which) where a port is taken, instead of stopping.",
    ),
    prometheus: bool = typer.Option(
        False, "--prometheus", help="Also start Prometheus (Debian's, `make tools`) on :9090."
    ),
) -> None:
    """Start PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set), migrate, run all."""
    from celery_stack_devstack.processes import Ports
    from celery_stack_devstack.run import main

    raise typer.Exit(
        main(
            run_dir,
            Ports(api_port, demo_port, metrics_port_base),
            prometheus=prometheus,
            move=move_ports,
        )
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo("celery-stack 0.1.0")
