"""A small HTTP/1.1 keep-alive load generator, for machines without wrk.

    python -m bench.loadgen --port 8000 --path-template /api/v1/posts/{id}/views --ids 1000 \
        --connections 32 --duration 10 --header "Authorization: Bearer ..."

Runs in its own process (never in the server's). Each connection sends one request, reads the
whole response, records the latency, and sends the next (closed loop, no pipelining); with
`--rate R` the connections share a fixed schedule of R requests/s instead (open loop, latency
counted from each request's scheduled time). Prints one JSON object: requests, statuses,
requests/s, latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _Run:
    """What every connection of one run shares: where, what, until when, and the results."""

    host: str
    port: int
    requests: list[bytes]
    deadline: float
    record_from: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


async def _connection(run: _Run, interval: float = 0.0, first: float = 0.0) -> None:
    requests, latencies, statuses = run.requests, run.latencies, run.statuses
    reader, writer = await asyncio.open_connection(run.host, run.port)
    i = random.randrange(len(requests))
    scheduled = first
    try:
        while True:
            if interval:
                # Open loop: each request has its time slot; a late one is measured from its
                # slot, so a stalled server cannot hide its queue (no coordinated omission).
                wait = scheduled - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = scheduled
                scheduled += interval
            else:
                now = time.perf_counter()
            if now >= run.deadline:
                return
            writer.write(requests[i])
            i = (i + 1) % len(requests)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            done = time.perf_counter()
            if now >= run.record_from:
                status = int(head[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(done - now)
    finally:
        writer.close()


async def _main(args: argparse.Namespace) -> dict[str, object]:
    headers = "".join(f"{h}\r\n" for h in args.header)
    rng = random.Random(7)
    body = Path(args.body_file).read_bytes() if args.body_file else b""
    if body:
        headers += "Content-Type: application/json\r\n"
    requests = [
        (
            f"{args.method} {args.path_template.format(id=rng.randint(1, args.ids))} HTTP/1.1\r\n"
            f"Host: {args.host}:{args.port}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for _ in range(1 if body else 10_000)
    ]
    epoch = time.time()
    start = time.perf_counter()
    record_from = start + args.warmup
    run = _Run(args.host, args.port, requests, record_from + args.duration, record_from)
    interval = args.connections / args.rate if args.rate else 0.0
    await asyncio.gather(
        *(
            _connection(run, interval, start + n * interval / args.connections)
            for n in range(args.connections)
        )
    )
    latencies, statuses = sorted(run.latencies), run.statuses

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))] * 1000

    return {
        "generator": "python-asyncio",
        "started_epoch": epoch,
        "mode": f"open loop at {args.rate:.0f} req/s" if args.rate else "closed loop",
        "connections": args.connections,
        "requests": len(latencies),
        "statuses": statuses,
        "rps": len(latencies) / args.duration,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000,
        **({"latencies_ms": [round(x * 1000, 3) for x in latencies]} if args.dump else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--method", default="POST")
    p.add_argument("--path-template", required=True)
    p.add_argument("--ids", type=int, default=1000)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--rate", type=float, default=0.0, help="requests/s in all (open loop); 0 = closed loop"
    )
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body-file", default="", help="send this JSON body with every request")
    p.add_argument("--dump", action="store_true", help="include every latency (ms) in the output")
    p.add_argument("--out", default="", help="write the JSON here instead of stdout")
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(_main(args))
    except ImportError:
        result = asyncio.run(_main(args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)
    else:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
