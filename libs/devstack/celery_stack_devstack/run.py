"""`make run`: the whole stack locally, with its own PostgreSQL and Redis unless URLs are given."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape

from celery_stack_core.migrate import upgrade
from celery_stack_core.rules.defaults import DEMO_OVERRIDES
from celery_stack_devstack import prometheus_local
from celery_stack_devstack.processes import Ports, Proc, local_stack
from celery_stack_devstack.servers import PostgresServer, RedisServer, free_port

console = Console(highlight=False)
COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red"]


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _pump(name: str, color: str, stream: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace").rstrip()
        console.print(f"[{color}]{name:>18}[/] | {escape(text)}", soft_wrap=True)


async def _ensure_database(url: str) -> None:
    import asyncpg

    base, _, name = url.replace("postgresql+asyncpg://", "postgresql://").rpartition("/")
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main(
    run_dir: Path = Path(".run"), ports: Ports | None = None, *, prometheus: bool = False
) -> int:
    ports = ports or Ports()
    run_dir = run_dir.resolve()
    run_dir.mkdir(exist_ok=True)
    env = dict(os.environ)
    servers: list[PostgresServer | RedisServer] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children: list[tuple[Proc, subprocess.Popen[bytes]]] = []
    try:
        if not env.get("DATABASE_URL"):
            pg = PostgresServer(run_dir / "postgres", port=_port(55432)).start()
            servers.append(pg)
            env["DATABASE_URL"] = pg.url("celery_stack")
            console.print(f"started PostgreSQL on 127.0.0.1:{pg.port} (data in {pg.datadir})")
        if not env.get("REDIS_URL"):
            # AOF with appendfsync always: the loss bound of docs/loss-bounds.md.
            rd = RedisServer(run_dir / "redis", port=_port(56379)).start()
            servers.append(rd)
            env["REDIS_URL"] = rd.url
            console.print(
                f"started Redis on 127.0.0.1:{rd.port} (AOF always, data in {rd.datadir})"
            )
        # The maintenance-rules demo (README): coupons expire and idle chats end within a minute.
        env.setdefault("MAINTENANCE_RULE_OVERRIDES", json.dumps(DEMO_OVERRIDES))
        asyncio.run(_ensure_database(env["DATABASE_URL"]))
        upgrade(env["DATABASE_URL"])
        console.print("migrations applied")
        ports = dataclasses.replace(ports, api=_port(ports.api))
        stack = local_stack(run_dir, ports)
        prom = prometheus_local.prepare(
            run_dir, ports.api, stack, port=_port(prometheus_local.PORT)
        )
        if prometheus:
            stack = [*stack, prom]
        for i, proc in enumerate(stack):
            p = subprocess.Popen(
                proc.argv, env={**env, **proc.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            children.append((proc, p))
            threading.Thread(
                target=_pump, args=(proc.name, COLORS[i % len(COLORS)], p.stdout), daemon=True
            ).start()
        lines = [f"  {'api':<20} http://127.0.0.1:{ports.api}  (docs /docs, metrics /metrics)"]
        lines += [
            f"  {p.name:<20} metrics http://127.0.0.1:{p.env['METRICS_PORT']}/metrics"
            for p in stack
            if "METRICS_PORT" in p.env
        ]
        lines.append(prometheus_local.banner(prom, started=prometheus))
        lines.append(
            f"  {'demo-site':<20} http://127.0.0.1:{ports.demo_site}/ (scan it as demo.localtest)"
        )
        console.print(
            "\n[bold]celery-stack is running[/]\n"
            + "\n".join(lines)
            + "\n  tokens: Bearer dev-user-token (user), dev-admin-token (admin)"
            + "\n  Ctrl-C stops everything.\n"
        )
        while not stop.wait(0.5):
            for proc, p in children:
                if p.poll() is not None:
                    console.print(f"[red]{proc.name} exited with {p.returncode}; stopping[/]")
                    stop.set()
        return 0 if all(p.poll() is None for _, p in children) else 1
    finally:
        for _, p in children:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, p in children:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        for s in reversed(servers):
            s.stop()
        console.print("stopped")


if __name__ == "__main__":
    sys.exit(main())
