"""`celery-stack-api serve | hash-token`."""

from __future__ import annotations

import asyncio

import typer

from celery_stack_core.config import get_settings, hash_token
from celery_stack_core.logs import configure_logging
from celery_stack_core.rules import RuleConfigError, load_rules
from celery_stack_core.rules.bind import check_schema

app = typer.Typer(no_args_is_help=True, help="celery-stack HTTP API")


@app.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Address to bind."),  # noqa: S104 - a container's API
    port: int = typer.Option(8000, help="Port to bind."),
) -> None:
    """Run the API under uvicorn (one process; scale with replicas)."""
    import uvicorn

    settings = get_settings()
    configure_logging("api", settings.deploy.log_level)
    try:
        rules = [r for r in load_rules(settings) if r.enabled]
        # Against the live schema too, as the maintenance worker: a rule naming a missing
        # table or column stops the deploy here, not its first run at 3 a.m.
        asyncio.run(check_schema(settings, rules))
    except RuleConfigError as exc:
        typer.echo(f"celery-stack-api: invalid maintenance rules: {exc}", err=True)
        raise typer.Exit(78) from None  # EX_CONFIG, as the maintenance worker
    uvicorn.run(
        "celery_stack_api.main:create_app",
        factory=True,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )


@app.command("hash-token")
def hash_token_cmd(token: str = typer.Argument(..., help="The secret to digest.")) -> None:
    """Print the SHA-256 digest to put in API_TOKENS."""
    typer.echo(hash_token(token))
