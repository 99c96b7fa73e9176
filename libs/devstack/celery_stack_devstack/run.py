"""`make run`: the whole stack locally, with its own PostgreSQL and Redis unless URLs are given."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TypeAlias

from rich.console import Console
from rich.markup import escape

from celery_stack_core.localstack import STACK_FILE, write_stack_file
from celery_stack_core.migrate import upgrade
from celery_stack_core.rules.defaults import DEMO_OVERRIDES
from celery_stack_devstack import prometheus_local
from celery_stack_devstack.processes import Ports, Proc, local_stack
from celery_stack_devstack.servers import PostgresServer, RedisServer, free_port, port_available

console = Console(highlight=False)
COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red"]
READY_TIMEOUT = 120.0
Server: TypeAlias = PostgresServer | RedisServer
Child: TypeAlias = "tuple[Proc, subprocess.Popen[bytes]]"


class PortTaken(SystemExit):
    pass


def pick_port(preferred: int, what: str, *, move: bool) -> int:
    """`preferred` unless a process really holds it (TIME-WAIT does not count). Then stop with
    a message, or with `move` take a free port and say so loudly."""
    if port_available(preferred):
        return preferred
    if not move:
        raise PortTaken(
            f"port {preferred} ({what}) is in use by another process. Stop it, choose another "
            "port (`celery-stack-dev run --help`), or pass --move-ports to use free ports."
        )
    port = free_port()
    console.print(
        f"[bold red]!! port {preferred} ({what}) is in use: {what} moves to {port}. "
        f"Commands that assume {preferred} will not reach it.[/]"
    )
    return port


METRICS_PORTS = 5  # workers and beat replicas: Ports.metrics(0..4)


def _free_run(n: int) -> int:
    """The first of n consecutive ports free to bind."""
    for base in range(20000, 60000, n):
        if all(port_available(base + i) for i in range(n)):
            return base
    raise PortTaken(f"no {n} consecutive free ports")


def pick_ports(ports: Ports, *, move: bool) -> Ports:
    """Every port the stack's processes bind, each probed like pick_port."""
    base = ports.metrics_base
    if not all(port_available(base + i) for i in range(METRICS_PORTS)):
        last = base + METRICS_PORTS - 1
        if not move:
            raise PortTaken(
                f"a metrics port in {base}-{last} is in use by another process. Stop it, pass "
                "--metrics-port-base, or pass --move-ports to use free ports."
            )
        base = _free_run(METRICS_PORTS)
        console.print(
            f"[bold red]!! a metrics port in {ports.metrics_base}-{last} is in use: "
            f"metrics move to {base}-{base + METRICS_PORTS - 1}.[/]"
        )
    return Ports(
        api=pick_port(ports.api, "the API", move=move),
        demo_site=pick_port(ports.demo_site, "the demo site", move=move),
        metrics_base=base,
    )


def stack_ready(api_url: str, heartbeat_files: list[Path], since: float) -> bool:
    """The API answers /readyz with 200 and every worker and beat replica has proved, after
    `since`, that it consumes (its heartbeat file, touched only while consuming)."""
    import httpx

    try:
        if httpx.get(f"{api_url}/readyz", timeout=2).status_code != 200:
            return False
    except httpx.HTTPError:
        return False
    return all(f.exists() and f.stat().st_mtime >= since for f in heartbeat_files)


def _pump(name: str, color: str, stream: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace").rstrip()
        console.print(f"[{color}]{name:>18}[/] | {escape(text)}", soft_wrap=True)


async def _ensure_database(url: str) -> None:
    import asyncpg

    base, _, name = url.replace("postgresql+asyncpg://", "postgresql://").rpartition("/")
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        # Hand-written: the server's catalog and CREATE DATABASE are no tables of the models.
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _start_servers(run_dir: Path, env: dict[str, str], *, move: bool) -> list[Server]:
    servers: list[Server] = []
    if not env.get("DATABASE_URL"):
        port = pick_port(55432, "PostgreSQL", move=move)
        pg = PostgresServer(run_dir / "postgres", port=port).start()
        servers.append(pg)
        env["DATABASE_URL"] = pg.url("celery_stack")
        console.print(f"started PostgreSQL on 127.0.0.1:{pg.port} (data in {pg.datadir})")
    if not env.get("REDIS_URL"):
        # AOF with appendfsync always: the loss bound of docs/loss-bounds.md.
        rd = RedisServer(run_dir / "redis", port=pick_port(56379, "Redis", move=move)).start()
        servers.append(rd)
        env["REDIS_URL"] = rd.url
        console.print(f"started Redis on 127.0.0.1:{rd.port} (AOF always, data in {rd.datadir})")
    return servers


def _spawn(stack: list[Proc], env: dict[str, str]) -> list[Child]:
    children: list[Child] = []
    for i, proc in enumerate(stack):
        # A session of its own: the terminal's Ctrl-C reaches only this supervisor, which
        # stops each child once (a worker hit by both printed "Hitting Ctrl+C again" twice).
        p = subprocess.Popen(
            proc.argv,
            env={**env, **proc.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        children.append((proc, p))
        threading.Thread(
            target=_pump, args=(proc.name, COLORS[i % len(COLORS)], p.stdout), daemon=True
        ).start()
    return children


def _exited(children: list[Child], stop: threading.Event) -> bool:
    for proc, p in children:
        if p.poll() is not None:
            console.print(f"[red]{proc.name} exited with {p.returncode}; stopping[/]")
            stop.set()
            return True
    return False


def _banner(stack: list[Proc], ports: Ports, stack_file: Path, extra: list[str]) -> str:
    lines = [f"  {'api':<20} http://127.0.0.1:{ports.api}  (docs /docs, metrics /metrics)"]
    lines += [
        f"  {p.name:<20} metrics http://127.0.0.1:{p.env['METRICS_PORT']}/metrics"
        for p in stack
        if "METRICS_PORT" in p.env
    ]
    lines += extra
    lines.append(
        f"  {'demo-site':<20} http://127.0.0.1:{ports.demo_site}/ (scan it as demo.localtest)"
    )
    return (
        "\n[bold]celery-stack is running[/] (the API is ready and every worker consumes)\n"
        + "\n".join(lines)
        + "\n  tokens: Bearer dev-user-token (user), dev-admin-token (admin)"
        + f"\n  settings for the CLIs (celery-stack-beat status ...): {stack_file}"
        + "\n  Ctrl-C stops everything.\n"
    )


def _heartbeats(stack: list[Proc]) -> list[Path]:
    keys = ("WORKER_HEARTBEAT_FILE", "BEAT_HEARTBEAT_FILE")
    return [Path(p.env[k]) for p in stack for k in keys if k in p.env]


def _wait_ready(
    stack: list[Proc], children: list[Child], api_url: str, banner: str, stop: threading.Event
) -> None:
    """Print the banner once the stack can do work, not when its processes were started."""
    started = time.time()
    deadline = time.monotonic() + READY_TIMEOUT
    while not stop.wait(0.5) and not _exited(children, stop):
        if stack_ready(api_url, _heartbeats(stack), started - 1):
            console.print(banner)
            return
        if time.monotonic() > deadline:
            console.print(f"[bold red]the stack is not ready after {READY_TIMEOUT:.0f}s[/]")
            deadline = float("inf")


def _shutdown(children: list[Child], servers: list[Server]) -> None:
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


def main(
    run_dir: Path = Path(".run"),
    ports: Ports | None = None,
    *,
    prometheus: bool = False,
    move: bool = False,
) -> int:
    ports = ports or Ports()
    run_dir = run_dir.resolve()
    run_dir.mkdir(exist_ok=True)
    stack_file = run_dir / STACK_FILE.name
    env = dict(os.environ)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    servers: list[Server] = []
    children: list[Child] = []
    try:
        servers = _start_servers(run_dir, env, move=move)
        # The maintenance-rules demo (README): coupons expire and idle chats end within a minute.
        env.setdefault("MAINTENANCE_RULE_OVERRIDES", json.dumps(DEMO_OVERRIDES))
        asyncio.run(_ensure_database(env["DATABASE_URL"]))
        upgrade(env["DATABASE_URL"])
        console.print("migrations applied")
        ports = pick_ports(ports, move=move)
        stack = local_stack(run_dir, ports)
        # Prometheus's port is probed only when it runs; otherwise the banner says how to.
        prom_port = (
            pick_port(prometheus_local.PORT, "Prometheus", move=move)
            if prometheus
            else prometheus_local.PORT
        )
        prom = prometheus_local.prepare(run_dir, ports.api, stack, port=prom_port)
        if prometheus:
            stack = [*stack, prom]
        # What the CLIs (celery-stack-beat status, the janitor) read to find this stack.
        write_stack_file(
            stack_file,
            {"DATABASE_URL": env["DATABASE_URL"], "REDIS_URL": env["REDIS_URL"]},
        )
        children = _spawn(stack, env)
        extra = [prometheus_local.banner(prom, started=prometheus)]
        banner = _banner(stack, ports, stack_file, extra)
        _wait_ready(stack, children, f"http://127.0.0.1:{ports.api}", banner, stop)
        while not stop.wait(0.5):
            _exited(children, stop)
        return 0 if all(p.poll() is None for _, p in children) else 1
    except PortTaken as exc:
        console.print(f"[bold red]{exc}[/]")
        return 2
    finally:
        stack_file.unlink(missing_ok=True)
        _shutdown(children, servers)
        console.print("stopped")


if __name__ == "__main__":
    sys.exit(main())
