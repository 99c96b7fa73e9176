"""A flusher process for the chaos test: flushes in a loop and SIGKILLs itself at a chosen step.

python flusher.py --crash-at committed --crash-after 2   # die the 2nd time it commits
python flusher.py --drain                                # flush until empty, then exit 0
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal

from celery_stack_core.config import get_settings
from celery_stack_core.db import make_engine
from celery_stack_core.hooks import HOOKS
from celery_stack_core.redis_client import make_async_redis
from celery_stack_counters.flush import STEPS
from celery_stack_counters.flush_all import all_shards, flush_all


async def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where a stuck drain waits
    p = argparse.ArgumentParser()
    p.add_argument("--crash-at", choices=STEPS)
    p.add_argument("--crash-after", type=int, default=1)
    p.add_argument("--drain", action="store_true")
    args = p.parse_args()
    settings = get_settings()
    engine = make_engine(settings, pool_size=1)
    redis = make_async_redis(settings)
    seen = 0

    async def hook(step: str) -> None:
        nonlocal seen
        if step == args.crash_at:
            seen += 1
            if seen >= args.crash_after:
                os.kill(os.getpid(), signal.SIGKILL)

    HOOKS.install("flush", hook)
    while True:
        try:
            await flush_all(
                redis,
                engine,
                shards=settings.counters.shards,
                owner=f"flusher-{os.getpid()}",
                lease_ttl=1.0,
            )
        except Exception as exc:  # PostgreSQL or Redis restarting: try again
            print("flush failed:", repr(exc), flush=True)
            await asyncio.sleep(0.2)
            continue
        if args.drain:
            pending = [
                sk
                for sk in all_shards(settings.counters.shards)
                if await redis.exists(sk.live, sk.inflight)
            ]
            if not pending:
                return
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
